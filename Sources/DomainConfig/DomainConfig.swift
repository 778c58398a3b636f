// DomainConfig: see Sources/README.md.
