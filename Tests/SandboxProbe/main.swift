// sandbox-probe: applies a manifest to itself, then does what the SandboxTests ask, so the
// tests can watch a real sandboxed Swift process from outside.
//
//   sandbox-probe baseline              the "work" below without a sandbox (for strace)
//   sandbox-probe work <manifest>       apply, do ordinary Swift work, exit 0
//   sandbox-probe blocked <manifest>    apply, then call socket(2), which must kill it
//   sandbox-probe blocked-thread <m>    apply, then call socket(2) from a second thread
//   sandbox-probe fork <manifest>       apply, then fork(), which the clone filter must kill
//   sandbox-probe inspect <manifest>    apply, then report what the process can see
//   sandbox-probe ready <manifest>      apply, do the work, say `ready` on --ready-fd, exit 0
//   sandbox-probe hang <manifest>       apply, then sleep 30 s without saying anything
// Every mode takes `--ready-fd N` anywhere (ServiceReadiness); a failing apply reports on it.
import Glibc
import Sandbox

let args = [CommandLine.arguments[0]] + ServiceReadiness.adopt(fromArguments: Array(CommandLine.arguments.dropFirst()),
                                                                program: "sandbox-probe")
guard args.count >= 2 else { out("usage: sandbox-probe baseline|work|blocked|inspect <manifest>"); exit(2) }
if args[1] == "baseline" {
    out("marker: start")
    work()
    exit(0)
}
guard args.count >= 3 else { out("missing manifest"); exit(2) }
let manifest = Sandbox.applyOrExit(manifestPath: args[2])

switch args[1] {
case "work":
    work()
    exit(0)
case "blocked":
    out("calling socket")
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    out("socket returned \(fd), still alive")   // must not be reached
    exit(1)
case "blocked-thread":
    var thread = pthread_t()
    _ = pthread_create(&thread, nil, socketOnThread, nil)
    pthread_join(thread, nil)
    exit(1)
case "fork":
    out("calling fork")
    let pid = fork()
    out("fork returned \(pid), still alive")
    exit(1)
case "ready":
    work()
    ServiceReadiness.ready("probe")
    exit(0)
case "hang":
    var ts = timespec(tv_sec: 30, tv_nsec: 0)
    nanosleep(&ts, nil)
    exit(1)
case "inspect":
    out("service=\(manifest.service)")
    out("pid=\(getpid())")
    let proc = open("/proc/self/status", O_RDONLY)
    out("proc=\(proc >= 0 ? "open" : "errno \(errno)")")
    var entries: [String] = []
    if let dir = opendir("/") {
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name != "." && name != ".." { entries.append(name) }
        }
        closedir(dir)
        out("root=[\(entries.joined(separator: ","))]")
    } else {
        out("root=errno \(errno)")
    }
    let caps = CapabilitySets.current()
    out("caps=\(caps.effective),\(caps.permitted),\(caps.inheritable),\(caps.bounding),\(caps.ambient)")
    var open: [Int32] = []
    for fd in Int32(0)..<64 where fcntl(fd, F_GETFD) >= 0 { open.append(fd) }
    out("fds=\(open.map(String.init).joined(separator: ","))")
    var rl = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl)
    out("nofile=\(rl.rlim_cur)")
    getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &rl)
    out("core=\(rl.rlim_cur)")
    let status = Sandbox.processStatus()
    out("nnp=\(status.noNewPrivs ? 1 : 0)")
    out("seccomp=\(status.seccompMode)")
    errno = 0
    let prio = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 5)
    out("setpriority=\(prio) errno=\(errno)")
    var uts = utsname()
    uname(&uts)
    let hostname = withUnsafeBytes(of: uts.nodename) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    out("hostname=\(hostname)")
    exit(0)
default:
    out("unknown mode \(args[1])")
    exit(2)
}
