// KVM: see Sources/README.md.
