// libFuzzer target: the SXP reader (DomainConfig/SXPParser.swift) over arbitrary bytes, as
// xend reads xend-config.sxp, saved domain configurations and `xm create -F` files.
// Whatever the bytes, parsing returns forms or throws ConfigError; printing what was parsed
// and reading that back must give the same forms.
import DomainConfig
import FuzzSupport

func fuzzSXP(_ input: UnsafeBufferPointer<UInt8>) {
    let text = String(decoding: input, as: UTF8.self)
    guard let forms = try? SXP.parseForms(text, file: "fuzz") else { return }
    for form in forms {
        let printed = form.value.description
        guard let again = try? SXP.parse(printed, file: "printed") else {
            fatalError("printed SXP does not parse again: \(printed.debugDescription)")
        }
        guard again == form.value else {
            fatalError("SXP round trip changed \(form.value) into \(again)")
        }
    }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzSXP) }
}
