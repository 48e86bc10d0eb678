"""ImageLongCLIPEvaluator: DataFlow-MM's LongCLIP image-text score, (cosine + 1) / 2 in [0, 1], texts up to
248 tokens."""

from __future__ import annotations

import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.models.longclip import DEFAULT_LONGCLIP, DEFAULT_TOKENIZER, LongCLIPCache
from dataflow.operators.core_vision.eval.image_clip_evaluator import SCALES, scaled_clip_rows


@OPERATOR_REGISTRY.register()
class ImageLongCLIPEvaluator(ImageEvaluator):
    """Adds ``longclip_score``: the LongCLIP cosine between each image and its (long) text, mapped to [0, 1]
    as (cosine + 1) / 2, DataFlow-MM's score.

    LongCLIP (Zhang et al., 2024) is CLIP whose text side takes 248 tokens instead of 77 (positional
    embeddings stretched and fine-tuned on long captions), so a detailed caption is scored whole. Texts
    longer than 248 tokens are cut there, as DataFlow-MM does. A row whose text is empty or null scores
    0, as in DataFlow-MM; a text cell may also hold a list of strings, scored by their mean cosine. Rows
    with an unreadable image get a null score and an ``image_error`` reason.

    The model is a LongCLIP checkpoint (``longclip-L.pt``: an OpenAI-clip-format state dict, read with
    ``torch.load(weights_only=True)`` and mapped onto transformers' ``CLIPModel``), a folder holding one,
    or a transformers CLIP folder with 248 text positions. A checkpoint that would need full unpickling
    (a pickled model object, which can run code) is refused with an error saying how to re-save it.

    Differences from DataFlow-MM:

    - the checkpoint runs in transformers' `CLIPModel` (weights mapped from OpenAI-clip names), read
      with `weights_only=True`: a pickled model object is refused (DataFlow-MM unpickles whatever the
      file holds); ViT checkpoints only (LongCLIP has no other); transformers CLIP folders with 248
      text positions are accepted too; a repo id is found in the local Hugging Face cache or, unless
      `HF_HUB_OFFLINE=1`, downloaded into it on first use (DataFlow-MM reads `model_name` as a local
      path only);
    - texts are tokenized by transformers' `CLIPTokenizer` (the same BPE vocabulary as LongCLIP's own
      tokenizer), from files beside the checkpoint or from `tokenizer_name`;
    - an unreadable image gets a null score and its reason in `image_error` / `image_error_detail`
      (DataFlow-MM: 0.0 for missing or undecodable files, the same as a poor match, and a crash for
      other errors); relative image paths resolve against the input file's folder;
    - a null text scores 0 (DataFlow-MM scores the string "nan" or "None"); a list of strings is
      scored by its mean cosine (DataFlow-MM scores the list's printed form);
    - images and texts run in batches of `batch_size` (DataFlow-MM: one pair per forward pass), images
      decoded in worker processes and shrunk to 256 pixels on the short side before the model's own
      resize (as every CLIP operator here); fp32 on the cpu, fp16 on cuda as DataFlow-MM;
    - images are turned upright by their EXIF orientation (DataFlow-MM scores them as stored);
    - the model loads on first `run`, not in `__init__`, and stays loaded;
    - options: `scale` ("clamp": the cosine clipped to [0, 1]; "cosine": the raw cosine), `batch_size`,
      `num_workers`, `tokenizer_name`; it also writes `image_error` and `image_error_detail`; `run`
      returns `[output_key]` as DataFlow-MM.

    Parameters:
        model_name: a LongCLIP checkpoint (`.pt` state dict in OpenAI-clip format), a folder holding
            one, a transformers CLIP folder with 248 text positions, or a Hugging Face repo id
            (`BeichenZhang/LongCLIP-L`) in the local cache or downloaded on first use
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        batch_size: images (and texts) per model forward pass
        scale: how the cosine becomes the score: `"unit"` (cos + 1) / 2, DataFlow-MM's; `"clamp"` the
            cosine clipped to [0, 1]; `"cosine"` the raw cosine
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        tokenizer_name: where a `.pt` checkpoint's tokenizer comes from when no `vocab.json` and
            `merges.txt` lie beside it: a folder or a Hugging Face repo id of any OpenAI CLIP (they share
            one tokenizer); unused for a transformers folder, which has its own
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_text_key: column holding the text: one string or a list of strings
        output_key: column the score is written to
    """

    description = "DataFlow-MM's LongCLIP image-text score for long texts (248 tokens): (cos + 1) / 2."
    description_zh = "用 LongCLIP（文本长度 248 token）计算图像与长文本的相似度，按 DataFlow-MM 映射为 (余弦 + 1) / 2。"
    loads_model = True
    model_params = {"model_name": "longclip"}
    columns = ("longclip_score",)
    renames = {"longclip_score": "output_key"}

    example = Example.on_example_data(
        "ImageLongCLIPEvaluator",
        """
        op = ImageLongCLIPEvaluator(model_name="BeichenZhang/LongCLIP-L")
        op.run(storage.step(), input_image_key="image", input_text_key="caption", output_key="longclip_score")
        """,
        not_run="needs a LongCLIP checkpoint (download it once with `hf download BeichenZhang/LongCLIP-L` "
        "and `hf download openai/clip-vit-base-patch32` for its tokenizer, on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = DEFAULT_LONGCLIP,
        device: str | None = None,
        batch_size: int = 32,
        scale: str = "unit",
        num_workers: int | None = None,
        tokenizer_name: str = DEFAULT_TOKENIZER,
    ):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.model_name = model_name
        self.device = device
        self.batch_size = batch_size
        self.scale = scale
        self.num_workers = num_workers
        self.tokenizer_name = tokenizer_name
        self.models = LongCLIPCache(model_name, device, batch_size, tokenizer_name)

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        return scaled_clip_rows(self, self.models.get(), df, base_dir, keys, "longclip_score")

    def run(
        self,
        storage,
        input_image_key: str = "image_path",
        input_text_key: str = "text",
        output_key: str = "longclip_score",
    ) -> list[str]:
        self.evaluate(storage, input_image_key=input_image_key, input_text_key=input_text_key, output_key=output_key)
        return [output_key]  # what DataFlow-MM's run returns (image_error columns are written too)
