// Boot: see Sources/README.md.
