"""Image operators. ``from dataflow.operators.core_vision import ImageDeduplicateFilter`` and friends."""

from dataflow.operators.core_vision.eval.image_aesthetic_evaluator import ImageAestheticEvaluator
from dataflow.operators.core_vision.eval.image_embedding_evaluator import ImageEmbeddingEvaluator
from dataflow.operators.core_vision.eval.image_hash_evaluator import ImageHashEvaluator
from dataflow.operators.core_vision.eval.image_histogram_evaluator import ImageHistogramEvaluator
from dataflow.operators.core_vision.eval.image_metadata_evaluator import ImageMetadataEvaluator
from dataflow.operators.core_vision.eval.image_quality_evaluator import ImageQualityEvaluator
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import ImageTextSimilarityEvaluator
from dataflow.operators.core_vision.filter.image_aspect_ratio_filter import ImageAspectRatioFilter
from dataflow.operators.core_vision.filter.image_deduplicate_filter import ImageDeduplicateFilter
from dataflow.operators.core_vision.filter.image_embedding_deduplicate_filter import ImageEmbeddingDeduplicateFilter
from dataflow.operators.core_vision.filter.image_exact_deduplicate_filter import ImageExactDeduplicateFilter
from dataflow.operators.core_vision.filter.image_hash_deduplicate_filter import ImageHashDeduplicateFilter
from dataflow.operators.core_vision.filter.image_histogram_deduplicate_filter import ImageHistogramDeduplicateFilter
from dataflow.operators.core_vision.filter.image_resolution_filter import ImageResolutionFilter
from dataflow.operators.core_vision.filter.image_text_similarity_filter import ImageTextSimilarityFilter
from dataflow.operators.core_vision.filter.score_range_filter import ScoreRangeFilter
from dataflow.operators.core_vision.generate.image_downloader import ImageDownloader

__all__ = [
    "ImageAestheticEvaluator",
    "ImageDeduplicateFilter",
    "ImageDownloader",
    "ImageEmbeddingEvaluator",
    "ImageTextSimilarityEvaluator",
    "ImageTextSimilarityFilter",
    "ImageAspectRatioFilter",
    "ImageHistogramEvaluator",
    "ImageQualityEvaluator",
    "ImageResolutionFilter",
    "ImageEmbeddingDeduplicateFilter",
    "ImageExactDeduplicateFilter",
    "ImageHistogramDeduplicateFilter",
    "ImageHashDeduplicateFilter",
    "ImageHashEvaluator",
    "ImageMetadataEvaluator",
    "ScoreRangeFilter",
]
