"""cogo workers."""
