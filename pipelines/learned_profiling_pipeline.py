"""Z-Image-style profiling with its learned half: rule filters, dedup, NSFW and text screens, then the
learned scores, image-text alignment and captions whose models are on local disk.

    python pipelines/learned_profiling_pipeline.py [--input FOLDER_OR_JSONL] [--cache ./cache_learned]

Stages, in Z-Image's order (cheapest first):

1-5  header facts, size and shape filters, quality metrics, information density (as
     pipelines/image_profiling_pipeline.py)
6-7  exact and pHash dedup
8    ImageNSFWFilter        nudenet's ONNX detector (ships in its PyPI package): exposed-body classes
9    ImageTextAreaFilter    rapidocr's PP-OCR (ships in its package): text over 30 % of the image, caption bands
10   ImageClassifierEvaluator    an AI-generated-image detector from the Hub          } each runs only when
11   ImageTextSimilarityEvaluator  Chinese-CLIP caption alignment                       } its model is on disk;
12   ImageCaptionGenerator  a local vision-language model's captions                  } else one line says why

The same pipeline as a config: configs/learned_profiling.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataflow.cli import print_run_summary
from dataflow.core.config import missing_on_disk
from dataflow.log import get_logger
from dataflow.operators.core_vision import (
    ImageAspectRatioFilter,
    ImageCaptionGenerator,
    ImageClassifierEvaluator,
    ImageExactDeduplicateFilter,
    ImageHashDeduplicateFilter,
    ImageMetadataEvaluator,
    ImageNSFWFilter,
    ImageQualityEvaluator,
    ImageResolutionFilter,
    ImageTextAreaFilter,
    ImageTextSimilarityEvaluator,
    ScoreRangeFilter,
)
from dataflow.pipeline import PipelineABC
from dataflow.serving import LocalModelVLMServing_transformers
from dataflow.utils.storage import FileStorage

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT / "example_data" / "images.jsonl"
logger = get_logger("dataflow.pipeline")

AIGC_MODEL = "Organika/sdxl-detector"
CN_CLIP_MODEL = "OFA-Sys/chinese-clip-vit-base-patch16"
VLM_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


class LearnedProfilingPipeline(PipelineABC):
    def __init__(self, input_path: str | Path = DEFAULT_INPUT, cache_path: str = "./cache_learned"):
        self.storage = FileStorage(str(input_path), cache_path=cache_path, file_name_prefix="learned")
        image, size = {"input_image_key": "image"}, {"input_width_key": "width", "input_height_key": "height"}
        self.steps = [
            (ImageMetadataEvaluator(), image),
            (ImageResolutionFilter(min_width=64, min_height=64), image | size),
            (ImageAspectRatioFilter(min_ratio=0.333, max_ratio=3.0), image | size),
            (ImageQualityEvaluator(metrics="all"), image),
            (ScoreRangeFilter(min_score=0.03), {"input_score_key": "jpeg_bpp"}),
            (ImageExactDeduplicateFilter(on="bytes"), image),
            (ImageHashDeduplicateFilter(method="phash", max_distance=10, keep="sharpness"), image),
            (ImageNSFWFilter(max_score=0.5), image),
            (ImageTextAreaFilter(max_text_area_ratio=0.3, reject_caption_bands=True), image),
        ]
        learned = [
            (
                ImageClassifierEvaluator(model_name=AIGC_MODEL, label="artificial"),
                image | {"output_score_key": "aigc_score"},
            ),
            (
                ImageTextSimilarityEvaluator(model_name=CN_CLIP_MODEL),
                image | {"input_text_key": "caption", "output_score_key": "cn_clip_score"},
            ),
            (
                ImageCaptionGenerator(LocalModelVLMServing_transformers(hf_model_name_or_path=VLM_MODEL, batch_size=4)),
                {"input_modal_key": "image", "output_key": "vlm_caption"},
            ),
        ]
        for op, keys in learned:  # a learned stage runs when its model is on disk; else one line says why
            missing = missing_on_disk(op, keys)
            if missing:
                logger.warning("%s left out (not on local disk): %s", type(op).__name__, missing[0].splitlines()[0])
            else:
                self.steps.append((op, keys))

    def forward(self):
        for op, keys in self.steps:
            op.run(self.storage.step(), **keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(DEFAULT_INPUT), help="a folder of images or a jsonl/parquet table")
    parser.add_argument("--cache", default="./cache_learned")
    args = parser.parse_args()
    pipeline = LearnedProfilingPipeline(args.input, args.cache)
    pipeline.compile()
    pipeline.forward()
    print_run_summary(pipeline)


if __name__ == "__main__":
    main()
