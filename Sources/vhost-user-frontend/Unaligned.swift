// The `unaligned` mode's request shapes: buffers as a guest may hand them, which direct I/O
// cannot take as they are (blkback --cache direct bounces them; DirectIO.swift).

/// Splits `total` bytes into segments at odd offsets of a slot's buffer: first at byte
/// `shift`, then each after a gap of 3 bytes, cut at `cuts`.
func oddSegments(total: Int, cuts: [Int], shift: Int) -> [(offset: Int, length: Int)] {
    var out: [(offset: Int, length: Int)] = [], pos = 0, at = shift
    for c in cuts.sorted() + [total] where c > pos && c <= total {
        out.append((at, c - pos))
        at += c - pos + 3
        pos = c
    }
    return out
}
