// libFuzzer target: the domain-configuration parser and evaluator (DomainConfig: the
// Python-subset script of `xm create` files, then the typed configuration built from its
// variables). Whatever the text, the result is a configuration or a ConfigError; the
// evaluator's own limits (steps, memory, nesting) must keep every input bounded.
import DomainConfig
import FuzzSupport

func fuzzDomainConfig(_ input: UnsafeBufferPointer<UInt8>) {
    let text = String(decoding: input, as: UTF8.self)
    // The first line may carry `xm create` arguments (name=value ...), as the command line does.
    var arguments: [String] = []
    var body = Substring(text)
    if text.hasPrefix("#args "), let nl = text.firstIndex(of: "\n") {
        arguments = text[text.index(text.startIndex, offsetBy: 6)..<nl].split(separator: " ").map(String.init)
        body = text[text.index(after: nl)...]
    }
    if let config = try? DomainConfiguration(parsing: String(body), file: "fuzz.cfg", arguments: arguments) {
        // What xend stores and sends back must be printable.
        _ = config.toSXP().description
    }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzDomainConfig) }
}
