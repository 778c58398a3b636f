// BlockBackend: see Sources/README.md.
