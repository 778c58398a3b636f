// VhostUser: see Sources/README.md.
