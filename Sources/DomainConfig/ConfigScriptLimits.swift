// The bounds on evaluating a configuration script: a config is untrusted input, so no
// file may make xm or xend loop, recurse or allocate without end.

/// Largest width or precision `pyFormat` accepts: enough for any real padding, small
/// enough that `"%999999999d"` cannot make a gigabyte string.
let pyFormatFieldMax = 4096
/// The largest string (bytes) and list or tuple (elements) a config may compute.
let pyMaxStringBytes = 16 << 20
let pyMaxListElements = 1 << 16

/// Deepest nesting of brackets, parentheses, unary operators, `not`, call and subscript
/// trailers, and of lists inside lists in a value. The parser and evaluator recurse once
/// per level, so the limit keeps hostile input from exhausting the stack (Python 2's own
/// parser gives up at about the same depth).
let pyMaxNestingDepth = 100
/// Deepest nesting of blocks (`def`, `if`, `for`, `while`), as Python's "too many
/// statically nested blocks".
let pyMaxBlockDepth = 20
/// Deepest chain of calls of functions the file defines (recursion included).
let pyMaxCallDepth = 50
/// Most iterations one run of a `while` loop may make.
let pyMaxLoopIterations = 100_000
/// Most steps (statements, loop iterations, calls, and list elements walked) one
/// evaluation may take.
let pyMaxSteps = 2_000_000
/// Most bytes of strings and lists (16 bytes an element) one evaluation may build in all,
/// counting every intermediate value.
let pyMaxAllocation = 256 << 20
/// Most CPU time one evaluation may take (its thread's), a backstop behind the step budget.
let pyMaxEvaluationTime: Duration = .seconds(5)
