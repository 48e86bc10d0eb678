"""Operator and pipeline base classes and the registry."""

from dataflow.core.operator import CATEGORIES, OperatorABC
from dataflow.core.pipeline import PipelineABC, PipelineCompileError
from dataflow.core.registry import OPERATOR_REGISTRY, OperatorImportError

__all__ = ["OperatorABC", "PipelineABC", "PipelineCompileError", "OPERATOR_REGISTRY", "OperatorImportError",
           "CATEGORIES"]
