// ConsoleBackend: see Sources/README.md.
