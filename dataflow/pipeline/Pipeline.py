"""DataFlow's module path of the pipeline base classes: ``from dataflow.pipeline.Pipeline import PipelineABC``."""

from dataflow.core.pipeline import BatchedPipelineABC, PipelineABC, StreamBatchedPipelineABC

__all__ = ["PipelineABC", "BatchedPipelineABC", "StreamBatchedPipelineABC"]
