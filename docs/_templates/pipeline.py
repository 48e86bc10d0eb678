from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage


class Curate(PipelineABC):
    def __init__(self, min_width=64):
        self.storage = FileStorage(first_entry_file_name="example_data/images.jsonl",
                                   cache_path="./cache_local", file_name_prefix="curate", cache_type="jsonl")
        self.metadata = ImageMetadataEvaluator()
        self.dedup = ImageExactDeduplicateFilter(on="bytes")
        self.min_width = ScoreRangeFilter(min_score=min_width)

    def forward(self):
        self.metadata.run(self.storage.step(), input_image_key="image")
        self.dedup.run(self.storage.step(), input_image_key="image")
        self.min_width.run(self.storage.step(), input_score_key="width")


pipeline = Curate().compile()    # dry run: checks every input_* key, reads only the input's header
pipeline.forward()                # runs the three steps
print("cached steps:", pipeline.resumable_steps())

changed = Curate(min_width=100).compile()
print("cached steps still valid after changing step 3:", changed.resumable_steps())
changed.forward()                 # skips steps 1-2, reruns step 3
changed.forward(resume_step=1)    # DataFlow style: skip the first step by hand, rerun steps 2-3
