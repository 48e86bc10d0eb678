"""Operator and pipeline base classes and the registry."""

from dataflow.core.dedup import Decisions, DedupFilter, Pairs
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.operator import CATEGORIES, OperatorABC, Threshold
from dataflow.core.pipeline import PipelineABC, PipelineCompileError
from dataflow.core.registry import OPERATOR_REGISTRY, OperatorImportError
from dataflow.core.row_filter import RowFilter, Verdict, bounds_verdict

__all__ = [
    "OperatorABC",
    "ImageEvaluator",
    "RowFilter",
    "Verdict",
    "bounds_verdict",
    "DedupFilter",
    "Decisions",
    "Pairs",
    "Threshold",
    "PipelineABC",
    "PipelineCompileError",
    "OPERATOR_REGISTRY",
    "OperatorImportError",
    "CATEGORIES",
]
