"""ImageCatFilter: DataFlow-MM's Caption-as-Teacher filter with an NLI model: complex, action-describing
captions that do not just transcribe the image's text (OCR overlap plus an NLI check)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.models.text_classifier import DEFAULT_NLI_MODEL, ENTAILMENT_INDEX, ClassifierCache
from dataflow.operators.core_vision.filter.cat_filter import jaccard, read_ocr_tokens, reject, tokens

# DataFlow-MM's hypotheses, word for word: the model reads these exact sentences, so any rewording would
# change which captions pass.
CAPS_HYPOTHESES = (
    "The caption describes what people or objects are doing.",
    "The caption describes interactions between multiple people or objects.",
    "The caption provides rich details about the scene.",
    "The caption mentions spatial relationships or positions of objects in the scene.",
    "The caption describes multiple aspects of the image rather than a single short fact.",
)
ACTION_HYPOTHESIS = "The caption clearly describes an action happening in the scene."
OCR_ONLY_HYPOTHESIS = (
    "The caption mainly transcribes the visible text in the image instead of describing the visual scene."
)
MIN_CAPTION_CHARS = 5  # shorter captions (after stripping) count no capability, as in DataFlow-MM


@OPERATOR_REGISTRY.register()
class ImageCatFilter(RowFilter):
    """Keeps image-caption pairs whose caption an NLI model finds complex and action-describing, and that
    do not mainly transcribe the text in the image (Caption-as-Teacher), as DataFlow-MM defines it.

    The entailment probability of a hypothesis is the softmax probability of the model's entailment class
    (index 2 by default) for (stripped caption, hypothesis). A caption is kept when (1) at least
    ``min_caps`` of five capability hypotheses ("The caption describes what people or objects are
    doing.", "... interactions between multiple people or objects.", "... rich details about the
    scene.", "... spatial relationships or positions of objects in the scene.", "... multiple aspects of
    the image rather than a single short fact.") reach ``complexity_thresh`` (a caption shorter than 5
    characters once stripped has none); (2) "The caption clearly describes an action happening in the
    scene." reaches ``action_thresh``; and (3) it is not OCR-only: when ``ocr_overlap_threshold`` > 0,
    the word tokens (``[A-Za-z']+``, lowercased) of the text OCR reads in the image are compared with
    the caption's; when their Jaccard overlap reaches ``ocr_overlap_threshold`` and "The caption mainly
    transcribes the visible text in the image instead of describing the visual scene." reaches
    ``ocr_nli_thresh``, the row is dropped. The image is read only for captions that pass (1) and (2).
    Dropped rows go to the rejected file with reason ``empty_caption``, ``low_complexity``,
    ``no_action`` or ``ocr_only`` and a detail with the scores; an unreadable image (of a caption that
    reached the OCR test) is rejected with its reason code (``missing``, ``truncated``, ...).

    Differences from DataFlow-MM:

    - OCR is RapidOCR (PP-OCRv6 detection and recognition, Chinese and English, ONNX models shipped in
      the rapidocr wheel) instead of Tesseract (`lang="eng+chi_sim"`), so the OCR test always runs where
      DataFlow-MM skips it on machines without a Tesseract install; the text read, and so the overlap,
      can differ;
    - an unreadable image is rejected with its reason code (DataFlow-MM keeps a row whose image is
      missing or not an image, and drops one whose image fails otherwise); every dropped row says which
      rule it failed (DataFlow-MM logs at debug level);
    - pairs run in batches of `batch_size` (DataFlow-MM: one pair per forward pass); padding is masked,
      so a pair's probabilities do not depend on its batch (equal to within float rounding); each of the
      six caption hypotheses is scored for every caption (DataFlow-MM stops at the first failed rule:
      the same rows are kept);
    - the model loads on first `run`, not in `__init__`, and stays loaded; it loads from a local folder or
      the local Hugging Face cache only (DataFlow-MM also passes `local_files_only=True`);
    - a null or non-text caption is empty (dropped, as in DataFlow-MM, which would also drop it);
    - options: `batch_size`, `entailment_label` (another class, for NLI models that order their labels
      differently), `num_workers` and `max_pixels` for the OCR.

    Parameters:
        model_name: a local folder holding a sequence-classification (NLI) model, or a Hugging Face repo
            id already in the local cache; nothing is downloaded
        complexity_thresh: lowest entailment probability at which a capability hypothesis counts (inclusive)
        min_caps: fewest capability hypotheses a kept caption entails
        action_thresh: lowest entailment probability of the action hypothesis kept (inclusive)
        ocr_overlap_threshold: token Jaccard overlap between OCR text and caption at which the OCR-only
            hypothesis is checked; 0 or less skips the OCR test (no image is read)
        ocr_nli_thresh: entailment probability of the OCR-only hypothesis at which an overlapping caption
            is dropped (inclusive)
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        batch_size: (caption, hypothesis) pairs per model forward pass
        entailment_label: the class whose probability is read: an index (DataFlow-MM reads 2, entailment
            in bart-large-mnli) or a label name from the model's config (`"entailment"`)
        num_workers: worker processes that run OCR; None = one per CPU core (inputs under 48 images run
            in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder), bytes,
            or a `{bytes, path}` dict
        input_caption_key: column holding the English caption
    """

    description = "DataFlow-MM's Caption-as-Teacher filter: NLI complexity and action checks, and not OCR-only."
    description_zh = "CaT 过滤：用 NLI 模型判断描述的复杂度与动作性，并结合 OCR 文字重叠度剔除只抄写图中文字的描述。"
    loads_model = True
    model_params = {"model_name": "text_classifier"}

    example = Example.on_example_data(
        "ImageCatFilter",
        """
        op = ImageCatFilter(model_name="facebook/bart-large-mnli", complexity_thresh=0.4, min_caps=2)
        op.run(storage.step(), input_image_key="image", input_caption_key="caption")
        """,
        not_run="needs a local NLI model (download it once with "
        "`huggingface-cli download facebook/bart-large-mnli` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = DEFAULT_NLI_MODEL,
        complexity_thresh: float = 0.4,
        min_caps: int = 2,
        action_thresh: float = 0.4,
        ocr_overlap_threshold: float = 0.2,
        ocr_nli_thresh: float = 0.6,
        device: str | None = None,
        batch_size: int = 32,
        entailment_label: int | str = ENTAILMENT_INDEX,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.model_name = model_name
        self.complexity_thresh = complexity_thresh
        self.min_caps = min_caps
        self.action_thresh = action_thresh
        self.ocr_thresh = ocr_overlap_threshold
        self.ocr_nli_thresh = ocr_nli_thresh
        self.device = device
        self.batch_size = batch_size
        self.entailment_label = entailment_label
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.models = ClassifierCache(model_name, device, batch_size)

    def entailment(self, captions: list[str], hypotheses: tuple[str, ...]) -> np.ndarray:
        """(len(captions), len(hypotheses)) entailment probabilities of each stripped caption."""
        if not captions:
            return np.zeros((0, len(hypotheses)))
        classifier = self.models.get()
        column = classifier.label_index(self.entailment_label)
        pairs = [(c.strip(), h) for c in captions for h in hypotheses]
        probs = classifier.probabilities(pairs, desc="ImageCatFilter")[:, column]
        return probs.reshape(len(captions), len(hypotheses)).astype(np.float64)

    def judge(self, df: pd.DataFrame, base_dir: str, input_image_key: str, input_caption_key: str) -> Verdict:
        if input_caption_key not in df.columns:
            raise KeyError(
                f"input_caption_key={input_caption_key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
            )
        captions = [c if isinstance(c, str) else "" for c in df[input_caption_key].tolist()]
        n = len(df)
        verdict = Verdict.keep_all(n)
        empty = np.array([not c.strip() for c in captions], dtype=bool)
        verdict.drop(empty, "empty_caption", "empty or missing caption")

        # Each distinct non-empty caption once: the five capability hypotheses and the action hypothesis.
        unique = sorted({c for c in captions if c.strip()})
        probs = dict(zip(unique, self.entailment(unique, (*CAPS_HYPOTHESES, ACTION_HYPOTHESIS))))
        caps = np.array(
            [
                int((probs[c][: len(CAPS_HYPOTHESES)] >= self.complexity_thresh).sum())
                if c in probs and len(c.strip()) >= MIN_CAPTION_CHARS
                else 0
                for c in captions
            ]
        )
        action = np.array([probs[c][-1] if c in probs else 0.0 for c in captions])
        verdict.drop(
            caps < self.min_caps,
            "low_complexity",
            lambda at: [f"{caps[i]} capabilities >= {self.complexity_thresh} < min_caps {self.min_caps}" for i in at],
        )
        verdict.drop(
            action < self.action_thresh,
            "no_action",
            lambda at: [f"action entailment {action[i]:.4g} < action_thresh {self.action_thresh}" for i in at],
        )

        if self.ocr_thresh > 0:  # DataFlow-MM skips the OCR test at 0 or below
            ocr = read_ocr_tokens(
                df,
                list(np.flatnonzero(verdict.kept)),
                input_image_key,
                base_dir,
                self.num_workers,
                self.max_pixels,
                type(self).__name__,
            )
            overlapping: dict[int, float] = {}
            for i, found in ocr.items():
                if not isinstance(found, set):  # an unreadable image: its reason code
                    reject(verdict, i, found.error, found.detail)
                elif found:
                    overlap = jaccard(found, tokens(captions[i]))
                    if overlap >= self.ocr_thresh:
                        overlapping[i] = overlap
            rows = sorted(overlapping)
            ocr_only = self.entailment([captions[i] for i in rows], (OCR_ONLY_HYPOTHESIS,))[:, 0]
            for i, p in zip(rows, ocr_only):
                if p >= self.ocr_nli_thresh:
                    reject(
                        verdict,
                        i,
                        "ocr_only",
                        f"OCR token overlap {overlapping[i]:.4g} >= {self.ocr_thresh} and OCR-only entailment "
                        f"{p:.4g} >= ocr_nli_thresh {self.ocr_nli_thresh}",
                    )
        verdict.columns["capability_count"] = lambda at: [int(caps[i]) for i in at]
        return verdict

    def missing_models(self, keys: dict | None = None) -> list[str]:
        problems = super().missing_models(keys)
        if self.ocr_thresh > 0:
            from dataflow.models.ocr import ocr_problem

            problem = ocr_problem()
            problems += [f"OCR: {problem}"] if problem else []
        return problems

    def run(self, storage, input_image_key: str = "image", input_caption_key: str = "caption") -> list[str]:
        self.filter(storage, input_image_key=input_image_key, input_caption_key=input_caption_key)
        return [input_image_key, input_caption_key]  # what DataFlow-MM's run returns
