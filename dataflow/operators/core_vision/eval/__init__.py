"""eval operators."""
