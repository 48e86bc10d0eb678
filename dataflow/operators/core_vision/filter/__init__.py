"""filter operators."""
