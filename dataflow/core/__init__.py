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
    "LLMServingABC",
    "VLMServingABC",
]


def __getattr__(name: str):
    # DataFlow-MM's scripts import their serving bases from here; looked up on first use, so that
    # importing dataflow.core never imports the serving package.
    if name in ("LLMServingABC", "VLMServingABC"):
        from dataflow.serving import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
