// libFuzzer's driver entry (compiler-rt FuzzerInterface.h, LLVM 11 and later): runs the
// fuzzer over `callback` with libFuzzer's command-line flags. The fuzz targets call it from
// their `main`, because SwiftPM gives every executable a `main` of its own.
#ifndef CFUZZ_H
#define CFUZZ_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv,
                        int (*callback)(const uint8_t *data, size_t size));

#endif
