// Sandbox: see Sources/README.md.
