// XenStore: see Sources/README.md.
