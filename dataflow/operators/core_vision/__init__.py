"""Image operators. ``from dataflow.operators.core_vision import ImageDeduplicateFilter`` and friends."""

from dataflow.operators.core_vision.eval.image_hash_evaluator import ImageHashEvaluator
from dataflow.operators.core_vision.eval.image_metadata_evaluator import ImageMetadataEvaluator
from dataflow.operators.core_vision.filter.image_exact_deduplicate_filter import ImageExactDeduplicateFilter
from dataflow.operators.core_vision.filter.image_hash_deduplicate_filter import ImageHashDeduplicateFilter
from dataflow.operators.core_vision.filter.score_range_filter import ScoreRangeFilter

__all__ = [
    "ImageExactDeduplicateFilter",
    "ImageHashDeduplicateFilter",
    "ImageHashEvaluator",
    "ImageMetadataEvaluator",
    "ScoreRangeFilter",
]
