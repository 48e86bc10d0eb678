"""Accuracy of duplicate detection: predicted duplicate groups scored against ground truth."""

from dataflow.evaluation.metrics import DedupMetrics, evaluate, to_group_labels

__all__ = ["DedupMetrics", "evaluate", "to_group_labels"]
