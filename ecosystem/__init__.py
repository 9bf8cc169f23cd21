"""cogo ecosystem."""
