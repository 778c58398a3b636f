// What every fuzz target shares: starting libFuzzer, and filling a guest-memory image.
import CFuzz
import GuestMemory
#if canImport(Glibc)
import Glibc
#endif

/// The target's body: one input, called by libFuzzer once per execution.
nonisolated(unsafe) private var body: (UnsafeBufferPointer<UInt8>) -> Void = { _ in }

/// Runs libFuzzer (its flags and corpus directories from the command line) over `target`
/// and exits with libFuzzer's status. `target` must return normally for every input; a
/// trap, a sanitizer report or a leak is a finding.
public func runFuzzer(_ target: @escaping (UnsafeBufferPointer<UInt8>) -> Void) -> Never {
    body = target
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    let status = LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        body(UnsafeBufferPointer(start: data, count: data == nil ? 0 : size))
        return 0
    }
    exit(status)
}

/// Copies `image` into `memory`'s regions in order (each region takes the next
/// `region.size` bytes) and zeroes what the image does not reach.
public func fill(_ memory: GuestMemory, with image: UnsafeBufferPointer<UInt8>) {
    var from = 0
    for region in memory.regions {
        let n = max(0, min(image.count - from, Int(region.size)))
        region.host.initializeMemory(as: UInt8.self, repeating: 0, count: Int(region.size))
        if n > 0 { region.host.copyMemory(from: image.baseAddress! + from, byteCount: n) }
        from += n
    }
}
