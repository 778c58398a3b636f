#include <seccomp.h>

// SCMP_ACT_ERRNO(x) is a function-like macro, which Swift does not import.
static inline uint32_t xenith_scmp_act_errno(uint16_t err) { return SCMP_ACT_ERRNO(err); }
