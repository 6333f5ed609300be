"""Storage safety: atomic writes, locks, path confinement, fingerprints."""
