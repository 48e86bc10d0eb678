"""The demo: curate the bundled example images.

    python pipelines/demo_pipeline.py [--cache ./cache_demo]

Steps: header metadata -> exact dedup (bytes) -> exact dedup (pixels) -> drop images narrower
than 64 px. Run it twice: the second run finds every step cached and skips it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataflow.cli import format_steps
from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

ROOT = Path(__file__).resolve().parents[1]


class DemoPipeline(PipelineABC):
    def __init__(self, cache_path: str = "./cache_demo", cache_type: str = "jsonl"):
        self.storage = FileStorage(first_entry_file_name=str(ROOT / "example_data" / "images.jsonl"),
                                   cache_path=cache_path, file_name_prefix="demo", cache_type=cache_type)
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
    storage = pipeline.storage
    print(format_steps(storage.cache_path, storage.file_name_prefix))
    last = len(pipeline.compiled_calls)
    print(f"\nresult:   {Path(storage.step_path(last)).resolve()}")
    print(f"rejected: {Path(storage.cache_path).resolve()}/{storage.file_name_prefix}_step*.rejected.jsonl")
    print(f"look:     dataflow inspect {storage.cache_path} --step {last} --head 5")


if __name__ == "__main__":
    main()
