"""Image operators. ``from dataflow.operators.core_vision import ImageDeduplicateFilter`` and friends."""

from dataflow.operators.core_vision.eval.image_aesthetic_evaluator import ImageAestheticEvaluator
from dataflow.operators.core_vision.eval.image_classifier_evaluator import ImageClassifierEvaluator
from dataflow.operators.core_vision.eval.image_clip_evaluator import ImageCLIPEvaluator
from dataflow.operators.core_vision.eval.image_embedding_evaluator import ImageEmbeddingEvaluator
from dataflow.operators.core_vision.eval.image_hash_evaluator import ImageHashEvaluator
from dataflow.operators.core_vision.eval.image_histogram_evaluator import ImageHistogramEvaluator
from dataflow.operators.core_vision.eval.image_longclip_evaluator import ImageLongCLIPEvaluator
from dataflow.operators.core_vision.eval.image_metadata_evaluator import ImageMetadataEvaluator
from dataflow.operators.core_vision.eval.image_nsfw_evaluator import ImageNSFWEvaluator
from dataflow.operators.core_vision.eval.image_quality_evaluator import ImageQualityEvaluator
from dataflow.operators.core_vision.eval.image_text_area_evaluator import ImageTextAreaEvaluator
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import ImageTextSimilarityEvaluator
from dataflow.operators.core_vision.eval.image_vqascore_evaluator import ImageVQAScoreEvaluator
from dataflow.operators.core_vision.filter.cat_filter import CatFilter
from dataflow.operators.core_vision.filter.clipscore_filter import CLIPScoreFilter
from dataflow.operators.core_vision.filter.datatailor_filter import DataTailorFilter
from dataflow.operators.core_vision.filter.failrate_filter import FailRateFilter
from dataflow.operators.core_vision.filter.image_aesthetic_filter import ImageAestheticFilter
from dataflow.operators.core_vision.filter.image_aspect_ratio_filter import ImageAspectRatioFilter
from dataflow.operators.core_vision.filter.image_cat_filter import ImageCatFilter
from dataflow.operators.core_vision.filter.image_clip_filter import ImageClipFilter
from dataflow.operators.core_vision.filter.image_complexity_filter import ImageComplexityFilter
from dataflow.operators.core_vision.filter.image_consistency_filter import ImageConsistencyFilter
from dataflow.operators.core_vision.filter.image_deduplicate_filter import ImageDeduplicateFilter
from dataflow.operators.core_vision.filter.image_diversity_filter import ImageDiversityFilter
from dataflow.operators.core_vision.filter.image_embedding_deduplicate_filter import ImageEmbeddingDeduplicateFilter
from dataflow.operators.core_vision.filter.image_exact_deduplicate_filter import ImageExactDeduplicateFilter
from dataflow.operators.core_vision.filter.image_hash_deduplicate_filter import ImageHashDeduplicateFilter
from dataflow.operators.core_vision.filter.image_histogram_deduplicate_filter import ImageHistogramDeduplicateFilter
from dataflow.operators.core_vision.filter.image_nsfw_filter import ImageNSFWFilter
from dataflow.operators.core_vision.filter.image_resolution_filter import ImageResolutionFilter
from dataflow.operators.core_vision.filter.image_robust_deduplicate_filter import ImageRobustDeduplicateFilter
from dataflow.operators.core_vision.filter.image_sensitive_filter import ImageSensitiveFilter
from dataflow.operators.core_vision.filter.image_text_area_filter import ImageTextAreaFilter
from dataflow.operators.core_vision.filter.image_text_similarity_filter import ImageTextSimilarityFilter
from dataflow.operators.core_vision.filter.knn_similarity_filter import KNNSimilarityFilter
from dataflow.operators.core_vision.filter.rule_base_filter import RuleBaseFilter
from dataflow.operators.core_vision.filter.score_filter import ScoreFilter
from dataflow.operators.core_vision.filter.score_range_filter import ScoreRangeFilter
from dataflow.operators.core_vision.filter.vision_dependent_filter import VisionDependentFilter
from dataflow.operators.core_vision.generate.image_caption_generator import ImageCaptionGenerator
from dataflow.operators.core_vision.generate.image_downloader import ImageDownloader
from dataflow.operators.core_vision.generate.prompted_generator import PromptedGenerator
from dataflow.operators.core_vision.refine.prompted_refiner import PromptedRefiner

__all__ = [
    "ImageRobustDeduplicateFilter",
    "PromptedGenerator",
    "ImageNSFWEvaluator",
    "ImageNSFWFilter",
    "CatFilter",
    "ImageCatFilter",
    "ImageTextAreaEvaluator",
    "ImageTextAreaFilter",
    "DataTailorFilter",
    "FailRateFilter",
    "VisionDependentFilter",
    "ImageClassifierEvaluator",
    "ImageLongCLIPEvaluator",
    "PromptedRefiner",
    "RuleBaseFilter",
    "CLIPScoreFilter",
    "ImageAestheticFilter",
    "ImageCLIPEvaluator",
    "ImageCaptionGenerator",
    "ImageClipFilter",
    "ImageComplexityFilter",
    "ImageConsistencyFilter",
    "ImageDiversityFilter",
    "ImageSensitiveFilter",
    "ImageVQAScoreEvaluator",
    "KNNSimilarityFilter",
    "ScoreFilter",
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
