"""DataFlow-compatible import path: ``from dataflow.utils.registry import OPERATOR_REGISTRY``."""

from dataflow.core.registry import OPERATOR_REGISTRY

__all__ = ["OPERATOR_REGISTRY"]
