"""refine operators."""
