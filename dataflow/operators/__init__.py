"""Built-in operators, grouped by modality and then by category folder."""
