// Core: see Sources/README.md.
