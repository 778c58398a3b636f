// Work the probe does after applying its manifest.
import Glibc

// Helpers live outside main.swift: top-level code there is main-actor isolated, and a
// closure of it running on another thread fails a runtime isolation check (libdispatch
// then syslog()s, which opens /etc/localtime — a sandbox death worth avoiding).
func out(_ s: String) {
    var s = s + "\n"
    s.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
}

/// What any service does: allocate, hash, start and join a thread, sleep briefly.
func work() {
    var table: [String: Int] = [:]
    for i in 0..<10_000 { table["key\(i)"] = i * i }
    var sum = 0
    for (_, v) in table { sum &+= v }
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { _ in
        var a = [UInt8](repeating: 1, count: 1 << 20)   // touches mmap'd memory
        a[a.count - 1] = 2
        return nil
    }, nil)
    precondition(rc == 0, "pthread_create: \(rc)")
    pthread_join(thread, nil)
    var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
    nanosleep(&ts, nil)
    out("work done \(sum)")
}


/// Thread body for `blocked-thread`.
func socketOnThread(_: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    out("calling socket on a thread")
    _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    out("socket returned, still alive")
    return nil
}
