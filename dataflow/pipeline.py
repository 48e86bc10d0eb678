"""DataFlow-compatible import path: ``from dataflow.pipeline import PipelineABC``."""

from dataflow.core.pipeline import PipelineABC, PipelineCompileError

__all__ = ["PipelineABC", "PipelineCompileError"]
