"""DataFlow-compatible import paths: ``from dataflow.pipeline import PipelineABC, BatchedPipelineABC`` (and
``dataflow.pipeline.Pipeline``, the module DataFlow defines them in)."""

from dataflow.core.pipeline import (
    BatchedPipelineABC,
    PipelineABC,
    PipelineCompileError,
    PipelineResumeError,
    StreamBatchedPipelineABC,
)

__all__ = [
    "PipelineABC",
    "BatchedPipelineABC",
    "StreamBatchedPipelineABC",
    "PipelineCompileError",
    "PipelineResumeError",
]
