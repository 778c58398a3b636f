import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A failed KVM or related system call: which operation, and the errno it returned.
public struct KVMError: Error, CustomStringConvertible {
    /// What was being done, e.g. "KVM_CREATE_VM".
    public let operation: String
    public let errno: Errno

    public init(_ operation: String, _ errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String { "\(operation): \(errno)" }
}

/// Retries `body` while it fails with EINTR; throws ``KVMError`` for any other negative result.
@inline(__always)
func check(_ operation: @autoclosure () -> String, _ body: () -> Int32) throws(KVMError) -> Int32 {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw KVMError(operation(), Errno(rawValue: e))
    }
}
