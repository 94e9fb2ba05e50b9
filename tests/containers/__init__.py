"""The container files, and the container smoke test."""
