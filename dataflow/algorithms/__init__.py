"""Numeric building blocks with no knowledge of storage or operators: hashes, searches, grouping, metrics."""
