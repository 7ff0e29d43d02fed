"""TLS: contexts, certificate files, ACME."""
