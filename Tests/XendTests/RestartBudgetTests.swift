import Testing
@testable import Xend

/// The back-ends' restart budget: back-off doubling from 0.1 s to at most 5 s, given up on
/// after `limit` deaths within the window; deaths older than the window are forgotten.
@Test func restartBudgetBacksOffThenGivesUp() {
    var b = RestartBudget(limit: 5, window: 30)
    #expect(b.died(at: 100) == .restart(after: 0.1))
    #expect(b.died(at: 101) == .restart(after: 0.2))
    #expect(b.died(at: 102) == .restart(after: 0.4))
    #expect(b.died(at: 103) == .restart(after: 0.8))
    #expect(b.died(at: 104) == .giveUp(count: 5))
    var c = RestartBudget(limit: 5, window: 30)
    for t in stride(from: 0.0, to: 400, by: 40) { #expect(c.died(at: t) == .restart(after: 0.1)) }
    var d = RestartBudget(limit: 100, window: 1000)
    var last = RestartBudget.Decision.restart(after: 0)
    for t in 0..<10 { last = d.died(at: Double(t)) }
    #expect(last == .restart(after: 5))
}
