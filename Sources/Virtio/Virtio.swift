// Virtio: see Sources/README.md.
