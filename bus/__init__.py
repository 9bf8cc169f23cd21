"""cogo bus."""
