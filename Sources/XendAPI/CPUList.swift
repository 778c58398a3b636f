// Xen's physical-CPU lists, shared by xm (showing affinities) and xend (applying them):
// the `cpus = "..."` config key and `xm vcpu-pin`'s CPUS argument are parsed here, and
// `xm vcpu-list`'s "CPU Affinity" column is formatted here (Xen 3.x main.py format_cpumap).

/// A CPU list as Xen writes it: `all`, numbers, ranges `N-M` and exclusions `^N` / `^N-M`,
/// separated by commas (`"0-3,^1"`, `"1"`, `"all"`).
public enum CPUList {
    /// Why a CPU list was refused; `description` is the message shown to the user.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ d: String) { description = d }
    }

    /// The CPUs `text` names on a host with `hostCPUs` CPUs (numbered 0..<hostCPUs), sorted,
    /// without duplicates. Items apply left to right; a list whose first item is an exclusion
    /// starts from every CPU (`"^0"` is every CPU but 0).
    /// - Throws: ``ParseError`` for a malformed item, a CPU the host lacks, or a list that
    ///   leaves no CPU.
    public static func parse(_ text: String, hostCPUs: Int) throws(ParseError) -> [Int] {
        let t = text.cpuListTrimmed()
        if t.lowercased() == "all" { return Array(0..<max(hostCPUs, 0)) }
        let items = t.split(separator: ",", omittingEmptySubsequences: false)
        guard !t.isEmpty, !items.isEmpty else { throw ParseError("Invalid CPU list '\(text)': it names no CPU") }
        var set = Set<Int>()
        for (i, raw) in items.enumerated() {
            var item = Substring(String(raw).cpuListTrimmed())
            let exclude = item.hasPrefix("^")
            if exclude { item = item.dropFirst() }
            if exclude && i == 0 { set = Set(0..<max(hostCPUs, 0)) }
            let ends = item.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count), ends.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) }),
                  let lo = Int(ends[0]), let hi = Int(ends.last!), lo >= 0, lo <= hi, hi < 1 << 16 else {
                throw ParseError("Invalid CPU list '\(text)': bad item '\(raw)' (expected N, N-M, ^N or all)")
            }
            guard hi < hostCPUs else {
                throw ParseError("Invalid CPU list '\(text)': CPU \(hi) does not exist (this host has CPUs 0-\(hostCPUs - 1))")
            }
            if exclude { set.subtract(lo...hi) } else { set.formUnion(lo...hi) }
        }
        guard !set.isEmpty else { throw ParseError("Invalid CPU list '\(text)': it leaves no CPU") }
        return set.sorted()
    }

    /// Xen 3.x's affinity text: `any cpu` when `cpus` covers all `hostCPUs` CPUs, `no cpus`
    /// when empty, otherwise ranges joined by commas (`[0,1,3]` → `0-1,3`).
    public static func format(_ cpus: [Int], hostCPUs: Int) -> String {
        let s = Set(cpus)
        if hostCPUs > 0 && s.count >= hostCPUs && (0..<hostCPUs).allSatisfy(s.contains) { return "any cpu" }
        return ranges(s.sorted())
    }

    /// `[0,1,2,4]` → `0-2,4`; `no cpus` for an empty list.
    public static func ranges(_ sorted: [Int]) -> String {
        guard var start = sorted.first else { return "no cpus" }
        var out: [String] = []
        var prev = start
        for c in sorted.dropFirst() + [Int.min] {
            if c == prev + 1 { prev = c; continue }
            out.append(start == prev ? "\(start)" : "\(start)-\(prev)")
            start = c; prev = c
        }
        return out.joined(separator: ",")
    }
}

extension String {
    fileprivate func cpuListTrimmed() -> String {
        let set = " \t"
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
