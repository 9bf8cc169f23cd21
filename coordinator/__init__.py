"""cogo coordinator."""
