// xend: the Xenith domain daemon (Xen 3.x xend). `xend start|stop|restart|status`.
import Xend
#if canImport(Glibc)
import Glibc
#endif

exit(XendDaemon().main(Array(CommandLine.arguments.dropFirst())))
