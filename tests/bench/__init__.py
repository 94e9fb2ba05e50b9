"""The benchmark's own tests; those that build a lab need root (marked integration)."""
