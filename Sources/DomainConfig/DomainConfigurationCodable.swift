// A domain configuration as a stored value: xend's registry keeps each domain's parsed
// configuration and writes it to disk as its SXP text (the form `xm create -n` prints and
// Xen's xend kept), so records of older xends, which held that text, still decode.

extension DomainConfiguration: Codable {
    /// Decodes the SXP text of a `(vm ...)` configuration.
    /// - Throws: `DecodingError.dataCorrupted` naming the parse error.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        do { self = try DomainConfiguration(sxp: SXP.parse(text, file: "<record>"), file: "<record>") }
        catch { throw DecodingError.dataCorruptedError(in: c, debugDescription: "domain configuration: \(error)") }
    }

    /// Encodes the configuration as its SXP text.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(toSXP().description)
    }
}
