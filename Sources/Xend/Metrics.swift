// Prometheus's text exposition format (version 0.0.4) of the counters `xm top` shows, on
// xend's HTTP server at GET /metrics, written with swift-prometheus. A fresh registry is
// filled on each scrape, so a domain that is gone leaves no stale series behind.
import Prometheus
import XendAPI

enum Metrics {
    /// The content type Prometheus scrapers expect for the text format.
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The exposition text of `stats`: one series per domain for each metric, labelled
    /// `name` and `domid`, plus the host's memory and CPUs. Units: seconds and bytes.
    static func exposition(_ stats: DomainStatsList) -> String {
        let reg = PrometheusCollectorRegistry()
        reg.makeGauge(name: "xenith_host_memory_bytes", labels: [], help: "RAM of the host").set(Double(stats.hostMemoryKib) * 1024)
        reg.makeGauge(name: "xenith_host_cpus", labels: [], help: "Online CPUs of the host").set(Double(stats.hostCpus))
        for d in stats.domains {
            let l = [("name", d.name), ("domid", String(d.domid))]
            reg.makeCounter(name: "xenith_domain_cpu_seconds_total", labels: l, help: "vCPU time used by the domain")
                .increment(by: d.cpuTime)
            reg.makeGauge(name: "xenith_domain_running", labels: l, help: "1 when the domain runs, 0 when paused or stopped")
                .set(d.state.hasPrefix("r") ? 1.0 : 0.0)
            reg.makeGauge(name: "xenith_domain_memory_bytes", labels: l, help: "Memory target of the domain (balloon)")
                .set(Double(d.memoryKib) * 1024)
            reg.makeGauge(name: "xenith_domain_memory_max_bytes", labels: l, help: "Maximum memory of the domain")
                .set(Double(d.maxmemKib) * 1024)
            reg.makeGauge(name: "xenith_domain_vcpus", labels: l, help: "vCPUs of the domain").set(Double(d.vcpus))
            reg.makeGauge(name: "xenith_domain_vifs", labels: l, help: "Virtual network interfaces of the domain").set(Double(d.nets))
            reg.makeCounter(name: "xenith_domain_net_transmit_bytes_total", labels: l, help: "Bytes the domain sent on its vifs")
                .increment(by: Double(d.netTxBytes))
            reg.makeCounter(name: "xenith_domain_net_receive_bytes_total", labels: l, help: "Bytes the domain received on its vifs")
                .increment(by: Double(d.netRxBytes))
            reg.makeGauge(name: "xenith_domain_vbds", labels: l, help: "Virtual block devices of the domain").set(Double(d.vbds))
            reg.makeCounter(name: "xenith_domain_vbd_read_bytes_total", labels: l, help: "Bytes read by the domain's blkback processes")
                .increment(by: Double(d.vbdReadBytes))
            reg.makeCounter(name: "xenith_domain_vbd_write_bytes_total", labels: l, help: "Bytes written by the domain's blkback processes")
                .increment(by: Double(d.vbdWriteBytes))
        }
        return reg.emitToString()
    }
}
