"""Real stripe processes in network namespaces (root; marked integration)."""
