"""The shell (config, CLI, stripe/io) without network namespaces: no root."""
