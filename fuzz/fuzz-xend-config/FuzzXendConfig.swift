// libFuzzer target: the xend-config.sxp reader (DomainConfig/XendConfig.swift). Whatever the
// text, the result is a configuration or a ConfigError; a configuration that was read prints
// (toSXP) into forms that read back to the same configuration.
import DomainConfig
import FuzzSupport

func fuzzXendConfig(_ input: UnsafeBufferPointer<UInt8>) {
    let text = String(decoding: input, as: UTF8.self)
    guard let config = try? XendConfig(parsing: text, file: "fuzz.sxp") else { return }
    let printed = config.toSXP().map(\.description).joined(separator: "\n")
    do {
        let again = try XendConfig(parsing: printed, file: "printed.sxp")
        if again != config { fatalError("xend-config round trip changed the settings:\n\(printed)") }
    } catch {
        fatalError("printed xend-config does not read back: \(error)\n\(printed)")
    }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzXendConfig) }
}
