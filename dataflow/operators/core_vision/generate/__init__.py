"""generate operators."""
