"""The demo: curate the bundled example images.

    python pipelines/demo_pipeline.py [--cache ./cache_demo]

Steps: header metadata -> exact dedup (bytes) -> exact dedup (pixels) -> drop images narrower
than 64 px. Run it twice: the second run finds every step cached and skips it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataflow.cli import print_run_summary
from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

ROOT = Path(__file__).resolve().parents[1]


class DemoPipeline(PipelineABC):
    def __init__(self, cache_path: str = "./cache_demo", cache_type: str = "jsonl"):
        self.storage = FileStorage(
            first_entry_file_name=str(ROOT / "example_data" / "images.jsonl"),
            cache_path=cache_path,
            file_name_prefix="demo",
            cache_type=cache_type,
        )
        self.metadata = ImageMetadataEvaluator()
        self.exact_bytes = ImageExactDeduplicateFilter(on="bytes")
        self.exact_pixels = ImageExactDeduplicateFilter(on="pixels")
        self.min_width = ScoreRangeFilter(min_score=64)

    def forward(self):
        self.metadata.run(self.storage.step(), input_image_key="image")
        self.exact_bytes.run(self.storage.step(), input_image_key="image")
        self.exact_pixels.run(self.storage.step(), input_image_key="image")
        self.min_width.run(self.storage.step(), input_score_key="width")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="./cache_demo")
    parser.add_argument("--cache-type", default="jsonl", choices=["jsonl", "json", "csv", "parquet"])
    args = parser.parse_args()
    pipeline = DemoPipeline(args.cache, args.cache_type)
    pipeline.compile()
    pipeline.forward()
    print_run_summary(pipeline)


if __name__ == "__main__":
    main()
