"""Extraction: discover inputs -> plan clips -> decode -> encode -> fuse -> hand rows to the store."""
