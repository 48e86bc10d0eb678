"""ImageVQAScoreEvaluator: DataFlow-MM's VQA score, how much more a BLIP VQA model answers "yes" than "no"
to "Does this image match the description: <text>?"."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from PIL import Image

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.images import image_column
from dataflow.core.parallel import ItemResult
from dataflow.core.parallel_stream import stream_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, load_image
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import captions_of

DEFAULT_VQA_MODEL = "Salesforce/blip-vqa-base"
# DataFlow-MM's question, word for word: the model reads this exact sentence.
QUESTION = "Does this image match the description: {}? Answer yes or no."


def decode(source, base_dir: str | None, size: tuple[int, int] | None, max_pixels: int | None) -> np.ndarray:
    """The image upright in RGB, resized to the processor's ``size`` (width, height) as BLIP's processor
    resizes it (bicubic, aspect not kept), so only small arrays leave the worker and the processor's own
    resize has nothing left to do."""
    img = load_image(source, base_dir, max_pixels=max_pixels)
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img)


class BlipVQAScorer:
    """A BLIP VQA model and processor on one device: the yes-probability of (image, question) pairs."""

    def __init__(self, model_name: str, device: str | None, batch_size: int):
        import torch
        from transformers import BlipForQuestionAnswering, BlipProcessor

        from dataflow.models.clip import resolve_device
        from dataflow.models.text_classifier import incomplete_model, resolve_model_dir

        folder = resolve_model_dir(model_name, what="BLIP VQA model", repo_hint=DEFAULT_VQA_MODEL)
        try:
            self.processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
            model = BlipForQuestionAnswering.from_pretrained(folder, local_files_only=True)
        except OSError as exc:  # weights, tokenizer or processor files missing from the folder
            raise incomplete_model(model_name, folder, exc, "BLIP VQA model", DEFAULT_VQA_MODEL) from exc
        self.device = resolve_device(device)
        self.model = model.to(self.device).float().eval()  # fp32, as DataFlow-MM runs it
        self.batch_size = max(1, int(batch_size))
        tokenizer = self.processor.tokenizer
        # The answers as DataFlow-MM scores them: each tokenized with its special tokens, used as labels
        self.answers = [
            tokenizer(word, add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
            for word in ("yes", "no")
        ]
        self.max_length = int(model.config.text_config.max_position_embeddings)
        size = getattr(self.processor.image_processor, "size", None) or {}
        height, width = (size.get("height"), size.get("width")) if isinstance(size, dict) else (None, None)
        self.size = (int(width), int(height)) if height and width else None
        self._torch = torch

    def answer_losses(self, images: list[np.ndarray], questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, the decoder's mean token loss for "yes" and for "no": the loss that
        ``BlipForQuestionAnswering(**inputs, labels=answer)`` gives one pair, computed for a batch."""
        torch = self._torch
        inputs = self.processor(
            images=[Image.fromarray(a) for a in images],
            text=questions,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        ).to(self.device)
        model = self.model
        image_embeds = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        question = model.text_encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        losses = []
        for answer in self.answers:
            labels = answer.expand(len(images), -1)
            out = model.text_decoder(
                input_ids=labels,
                encoder_hidden_states=question,
                encoder_attention_mask=inputs["attention_mask"],
                labels=labels,
                reduction="none",  # summed per pair; the model's own forward averages over the whole batch
            )
            tokens = (labels[:, 1:] != -100).sum(dim=1).clamp_min(1)
            losses.append((out.loss / tokens).float().cpu().numpy())
        return losses[0], losses[1]

    def yes_probabilities(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """exp(-loss_yes) / (exp(-loss_yes) + exp(-loss_no) + 1e-8) per pair, clipped to [0, 1]."""
        out = np.empty(len(texts), dtype=np.float64)
        with self._torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                end = start + self.batch_size
                yes, no = self.answer_losses(images[start:end], [QUESTION.format(t) for t in texts[start:end]])
                p_yes, p_no = np.exp(-yes.astype(np.float32)), np.exp(-no.astype(np.float32))
                out[start:end] = np.clip(p_yes / (p_yes + p_no + 1e-8), 0.0, 1.0)
        return out


@OPERATOR_REGISTRY.register()
class ImageVQAScoreEvaluator(ImageEvaluator):
    """Adds ``vqa_score``: how likely a BLIP VQA model answers "yes" rather than "no" to "Does this image
    match the description: <text>? Answer yes or no.", in [0, 1].

    With the decoder's mean token losses for the answers "yes" and "no" (each tokenized with its special
    tokens, as DataFlow-MM does), the score is exp(-loss_yes) / (exp(-loss_yes) + exp(-loss_no) + 1e-8).
    A row whose text is empty or null scores 0, as in DataFlow-MM; a list of strings scores the mean
    over them. Rows with an unreadable image get a null score and an ``image_error`` reason.

    Differences from DataFlow-MM:

    - an unreadable image gets a null score and its reason in `image_error` / `image_error_detail`
      (DataFlow-MM: a score of 0.0 for missing or undecodable files, a crash for other errors);
      relative image paths resolve against the input file's folder; images are turned upright by
      their EXIF orientation (DataFlow-MM scores them as stored);
    - a null text scores 0 (DataFlow-MM scores the string "nan" or "None"); a list of strings scores
      the mean over them; a text too long for the model is truncated (DataFlow-MM raises);
    - pairs run in batches of `batch_size` (DataFlow-MM: two full forward passes per pair): the image
      and question are encoded once and both answers decoded from them, with per-pair losses, so a
      pair's score does not depend on its batch (equal to within float rounding); images are decoded
      and resized in worker processes;
    - the model loads on first `run`, not in `__init__`, and stays loaded; it loads from a local folder
      or the local Hugging Face cache only, so `local_only=False` downloads nothing;
    - it also writes `image_error` and `image_error_detail`; `run` returns `[output_key]` as DataFlow-MM.

    Parameters:
        model_name: a local folder holding a BLIP VQA model (`BlipForQuestionAnswering` and its
            `BlipProcessor`), or a Hugging Face repo id (from the local cache, downloaded into it on first use unless
            `HF_HUB_OFFLINE=1`)
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        local_only: accepted for DataFlow-MM scripts; models are always read from local files only
        batch_size: image-question pairs per model forward pass
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_text_key: column holding the description: one string or a list of strings
        output_key: column the score is written to
    """

    description = 'DataFlow-MM\'s VQA score: BLIP VQA P("yes") to "does this image match the description?".'
    description_zh = "用本地 BLIP 视觉问答模型计算图像是否符合文本描述的“是”概率 vqa_score（DataFlow-MM 的定义）。"
    loads_model = True
    model_params = {"model_name": "blip_vqa"}
    columns = ("vqa_score",)
    renames = {"vqa_score": "output_key"}

    example = Example.on_example_data(
        "ImageVQAScoreEvaluator",
        """
        op = ImageVQAScoreEvaluator(model_name="Salesforce/blip-vqa-base")
        op.run(storage.step(), input_image_key="image", input_text_key="caption", output_key="vqa_score")
        """,
        not_run="needs a local BLIP VQA model (download it once with "
        "`huggingface-cli download Salesforce/blip-vqa-base` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = DEFAULT_VQA_MODEL,
        device: str | None = None,
        local_only: bool = True,
        batch_size: int = 16,
        num_workers: int | None = None,
    ):
        self.model_name = model_name
        self.device = device
        self.local_only = local_only
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._scorer: BlipVQAScorer | None = None

    def scorer(self) -> BlipVQAScorer:
        if self._scorer is None:
            self._scorer = BlipVQAScorer(os.fspath(self.model_name), self.device, self.batch_size)
        return self._scorer

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        text_key = keys["input_text_key"]
        if text_key not in df.columns:
            raise KeyError(f"input_text_key={text_key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
        texts = [captions_of(v) for v in df[text_key].tolist()]
        scorer = self.scorer()
        out: list[ItemResult] = []
        window = max(self.batch_size * 4, 64)
        for start, results in stream_items(
            decode,
            sources,
            window=window,
            num_workers=self.num_workers,
            desc=type(self).__name__,
            base_dir=base_dir,
            size=scorer.size,
            max_pixels=DEFAULT_MAX_PIXELS,
        ):
            # one (image, text) pair per text of each readable row; rows without text score 0
            pairs = [(n, t) for n, r in enumerate(results) if r.error is None for t in texts[start + n]]
            probs = scorer.yes_probabilities([results[n].value for n, _ in pairs], [t for _, t in pairs])
            per_row: dict[int, list[float]] = {}
            for (n, _), p in zip(pairs, probs):
                per_row.setdefault(n, []).append(float(p))
            out.extend(
                ItemResult({"vqa_score": float(np.mean(per_row[n])) if n in per_row else 0.0}) if r.error is None else r
                for n, r in enumerate(results)
            )
        return out

    def run(
        self,
        storage,
        input_image_key: str = "image_path",
        input_text_key: str = "text",
        output_key: str = "vqa_score",
    ) -> list[str]:
        self.evaluate(storage, input_image_key=input_image_key, input_text_key=input_text_key, output_key=output_key)
        return [output_key]  # what DataFlow-MM's run returns (image_error columns are written too)
