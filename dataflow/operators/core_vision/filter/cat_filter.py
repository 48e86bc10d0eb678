"""CatFilter: DataFlow-MM's Caption-as-Teacher filter: complex captions (subject-verb-object triples, a
verb) that do not just transcribe the text in the image (OCR token overlap)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.parallel import map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.media import DEFAULT_MAX_PIXELS, load_image
from dataflow.operators.core_vision.eval.image_text_area_evaluator import prepare_ocr

# DataFlow-MM's rules, word for word: which dependents of a verb complete a (subject, verb, object)
# triple, and what a token is when OCR text and caption are compared.
SUBJECT_DEPRELS = ("nsubj", "nsubj:pass")
OBJECT_DEPRELS = ("obj", "iobj", "xcomp", "obl", "attr", "ccomp")
TOKEN = re.compile(r"[A-Za-z']+")


def tokens(text: str) -> set[str]:
    """The lowercased word tokens DataFlow-MM compares (``[A-Za-z']+``)."""
    return set(TOKEN.findall((text or "").lower()))


def ocr_tokens(
    source, base_dir: str | None, threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[str]:
    """The tokens of the text RapidOCR reads in one image, sorted (module-level, for worker processes)."""
    from dataflow.models.ocr import detect_text

    image = load_image(source, base_dir, max_pixels=max_pixels)
    return sorted(tokens(detect_text(image, recognize=True, threads=threads).text))


def jaccard(ocr: set[str], caption: set[str]) -> float:
    """|ocr & caption| / |ocr | caption| (``ocr`` non-empty)."""
    return len(ocr & caption) / len(ocr | caption)


def read_ocr_tokens(
    df: pd.DataFrame, rows: list[int], image_key: str, base_dir: str, num_workers: int | None, max_pixels, name: str
) -> dict[int, Any]:
    """Per row of ``rows``: its OCR tokens (a set), or the ``ItemResult`` of an unreadable image."""
    if not rows:
        return {}
    sources = image_column(df, image_key, name)
    threads = prepare_ocr(num_workers, len(rows))
    results = map_items(
        ocr_tokens,
        [sources[i] for i in rows],
        num_workers=num_workers,
        desc=f"{name} OCR",
        base_dir=base_dir,
        threads=threads,
        max_pixels=max_pixels,
    )
    return {i: set(r.value) if r.error is None else r for i, r in zip(rows, results)}


def reject(verdict: Verdict, row: int, reason: str, detail: str | None) -> None:
    """Drop one row (still kept) with its reason and detail."""
    if verdict.detail is None:
        verdict.detail = np.full(len(verdict.reason), None, dtype=object)
    verdict.reason[row], verdict.detail[row] = reason, detail


def triples_and_verb(doc) -> tuple[int, bool]:
    """DataFlow-MM's count of distinct (subject, verb lemma, object) triples in a parsed caption, and
    whether any word is a verb.

    A triple is a word attached as ``nsubj`` / ``nsubj:pass`` to a VERB head, that verb's lemma (its text
    when it has none), and each dependent of the verb attached as ``obj``, ``iobj``, ``xcomp``, ``obl``,
    ``attr`` or ``ccomp``; triples are counted over all sentences, each distinct one once.
    """
    triples = set()
    has_verb = False
    for sentence in doc.sentences:
        words = sentence.words
        children: dict[int, list] = {}
        for w in words:
            children.setdefault(w.head, []).append(w)
            has_verb = has_verb or w.upos == "VERB"
        for w in words:
            if w.deprel not in SUBJECT_DEPRELS or w.head == 0:
                continue
            head = words[w.head - 1]
            if head.upos != "VERB":
                continue
            for child in children.get(head.id, []):
                if child.deprel in OBJECT_DEPRELS:
                    triples.add((w.text, head.lemma or head.text, child.text))
    return len(triples), has_verb


@OPERATOR_REGISTRY.register()
class CatFilter(RowFilter):
    """Keeps image-caption pairs whose caption is complex and is not a transcription of the image's text
    (Caption-as-Teacher), as DataFlow-MM's CatFilter defines it.

    The caption is parsed into Universal Dependencies (stanza's English pipeline by default). It is kept
    when (1) it holds at least ``min_triples`` distinct (subject, verb, object) triples: a word attached
    as ``nsubj`` / ``nsubj:pass`` to a VERB, the verb's lemma, and each dependent of that verb attached
    as ``obj``, ``iobj``, ``xcomp``, ``obl``, ``attr`` or ``ccomp``; (2) some word is a VERB; and (3) it
    is not OCR-only: with the word tokens (``[A-Za-z']+``, lowercased) of the text OCR reads in the
    image and of the caption, an image without text passes, otherwise the Jaccard overlap of the two
    token sets must be under ``ocr_overlap_threshold``. The image is read only for captions that pass (1)
    and (2). Dropped rows go to the rejected file with reason ``empty_caption``, ``few_triples``,
    ``no_verb`` or ``ocr_only`` and a detail with the count or the overlap; an unreadable image (of a
    caption that reached the OCR test) is rejected with its reason code (``missing``, ``truncated``, ...).

    Differences from DataFlow-MM:

    - OCR is RapidOCR (PP-OCRv6 detection and recognition, Chinese and English, ONNX models shipped in
      the rapidocr wheel) instead of Tesseract (`pytesseract.image_to_string(img, lang="eng+chi_sim")`,
      which needs a system Tesseract install): the text read, and so the overlap, can differ;
    - DataFlow-MM's module as released leaves its stanza pipeline commented out, so every caption raises
      a NameError that its `run` catches, and every row is dropped; this is the filter its code describes,
      with the parser it names (stanza, tokenize/pos/lemma/depparse on the cpu), loaded from local files
      only (DataFlow-MM would pip-install stanza and download its models at import) and on first `run`;
    - an unreadable image is rejected with its reason code, and every dropped row says which rule it
      failed (DataFlow-MM drops them all silently, logging at debug level);
    - a null or non-text caption counts as empty; rejected rows carry their `triples` count;
    - options: `parser` (any callable returning a stanza-shaped document), `stanza_dir`, `num_workers`,
      `max_pixels`.

    Parameters:
        min_triples: fewest distinct (subject, verb, object) triples a kept caption holds
        ocr_overlap_threshold: a caption whose token Jaccard overlap with the image's OCR text reaches
            this is OCR-only and dropped (images without text always pass this test)
        parser: a callable `text -> document` shaped like stanza's (sentences of words with `id`,
            `head`, `upos`, `deprel`, `lemma`, `text`); None = stanza's English pipeline from `stanza_dir`
        stanza_dir: folder holding stanza's models; None = `$STANZA_RESOURCES_DIR` or
            `~/stanza_resources`; nothing is downloaded
        num_workers: worker processes that run OCR; None = one per CPU core (inputs under 48 images run
            in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        image_key: column holding the image: a path (relative to the input file's folder), bytes, or a
            `{bytes, path}` dict
        caption_key: column holding the English caption
    """

    description = "DataFlow-MM's Caption-as-Teacher filter: >= min_triples SVO triples, a verb, and not OCR-only."
    description_zh = (
        "CaT 复杂度与 OCR 过滤：依存句法统计主谓宾三元组并要求含动词，且描述不能只是图中文字（OCR 词重叠度）。"
    )
    loads_model = True

    example = Example.on_example_data(
        "CatFilter",
        """
        op = CatFilter(min_triples=2, ocr_overlap_threshold=0.2)
        op.run(storage.step(), image_key="image", caption_key="caption")
        """,
        not_run="needs stanza and its English models (pip install stanza, then once with network access: "
        "`python -c \"import stanza; stanza.download('en')\"`)",
    )

    def __init__(
        self,
        min_triples: int = 2,
        ocr_overlap_threshold: float = 0.2,
        parser: Callable[[str], Any] | None = None,
        stanza_dir: str | None = None,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.min_triples = min_triples
        self.ocr_thresh = ocr_overlap_threshold
        self.parser = parser
        self.stanza_dir = stanza_dir
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self._stanza: Callable[[str], Any] | None = None

    def parse(self, text: str):
        if self.parser is not None:
            return self.parser(text)
        if self._stanza is None:
            from dataflow.models.dependency_parser import load_stanza_parser

            self._stanza = load_stanza_parser(self.stanza_dir)
        return self._stanza(text)

    def judge(self, df: pd.DataFrame, base_dir: str, image_key: str, caption_key: str) -> Verdict:
        name = type(self).__name__
        if caption_key not in df.columns:
            raise KeyError(f"caption_key={caption_key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
        captions = [c if isinstance(c, str) else "" for c in df[caption_key].tolist()]
        n = len(df)
        verdict = Verdict.keep_all(n)
        empty = np.array([not c.strip() for c in captions], dtype=bool)
        verdict.drop(empty, "empty_caption", "empty or missing caption")

        parsed: dict[str, tuple[int, bool]] = {}
        for c in captions:
            if c.strip() and c not in parsed:
                parsed[c] = triples_and_verb(self.parse(c))
        triples = np.array([parsed[c][0] if c in parsed else 0 for c in captions], dtype=int)
        verbs = np.array([parsed[c][1] if c in parsed else False for c in captions], dtype=bool)
        verdict.drop(
            triples < self.min_triples,
            "few_triples",
            lambda at: [f"{triples[i]} subject-verb-object triples < min_triples {self.min_triples}" for i in at],
        )
        verdict.drop(~verbs, "no_verb", "the caption has no verb")

        ocr = read_ocr_tokens(
            df, list(np.flatnonzero(verdict.kept)), image_key, base_dir, self.num_workers, self.max_pixels, name
        )
        for i, found in ocr.items():
            if not isinstance(found, set):  # an unreadable image: its reason code
                reject(verdict, i, found.error, found.detail)
            elif found:
                overlap = jaccard(found, tokens(captions[i]))
                if not overlap < self.ocr_thresh:  # DataFlow-MM keeps a caption whose overlap is under it
                    reject(verdict, i, "ocr_only", f"OCR token overlap {overlap:.4g} >= {self.ocr_thresh}")
        verdict.columns["triples"] = lambda at: [int(triples[i]) for i in at]
        return verdict

    def required_columns(self, keys: dict) -> dict[str, str]:
        return {k: keys[k] for k in ("image_key", "caption_key") if keys.get(k)}

    def missing_models(self, keys: dict | None = None) -> list[str]:
        from dataflow.models.dependency_parser import parser_problem
        from dataflow.models.ocr import ocr_problem

        problems = [] if self.parser is not None else [parser_problem(self.stanza_dir)]
        problems.append(ocr_problem())
        return [p for p in problems if p]

    def run(self, storage, image_key: str, caption_key: str) -> list[str]:
        self.filter(storage, image_key=image_key, caption_key=caption_key)
        return [image_key, caption_key]  # what DataFlow-MM's run returns
