"""RuleBaseFilter: DataFlow-MM's rule-based filter of multimodal QA rows: 15 text heuristics on the question
and answer, then the image's size, aspect ratio and (with an image classifier) NSFW content."""

from __future__ import annotations

import re
import string
import unicodedata

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.parallel import map_items
from dataflow.core.parallel_stream import stream_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.log import get_logger
from dataflow.media import DEFAULT_MAX_PIXELS, image_info
from dataflow.media.loader import is_null

logger = get_logger("dataflow.rule_base_filter")

DEFAULT_NSFW_MODEL = "Falconsai/nsfw_image_detection"  # the classifier DataFlow-MM's pipeline loads
# DataFlow-MM's patterns and word lists, as they are: they decide which texts are dropped.
ID_PATTERN = re.compile(
    r"(身\s{0,10}份|id\s{0,10}number\s{0,10}|identification|identity|\s{0,10}ID\s{0,10}No\s{0,10}|"
    r"id\s{0,10}card\s{0,10}|NRIC\s{0,10}number\s{0,10}|IC\s{0,10}number\s{0,10}|"
    r"resident\s{0,10}registration\s{0,10}|I.D.\s{0,10}Number\s{0,10})",
    re.I,
)
SPECIAL_CHARACTERS = [
    re.compile(p)
    for p in (
        r"u200e",
        r"&#247;|\? :",
        r"[�□]|\{\/U\}",
        r"U\+26[0-F][0-D]|U\+273[3-4]|U\+1F[3-6][0-4][0-F]|U\+1F6[8-F][0-F]",
    )
]
_ENTITIES = ("nbsp", "lt", "gt", "amp", "quot", "apos", "hellip", "ndash", "mdash", "lsquo", "rsquo", "ldquo", "rdquo")
HTML_ENTITIES = tuple(
    f"{a}{e}{b}"
    for e in _ENTITIES
    for a, b in (("&", "；"), ("&", ";"), ("＆", "；"), ("＆", ";"), ("＆", ""), ("&", ""))
)
BULLETS = ("\u2022", "\u2023", "\u25b6", "\u25c0", "\u25e6", "\u25a0", "\u25a1", "\u25aa", "\u25ab", "\u2013")
SYMBOLS = ("#", "...", "…")
LOREM = re.compile(r"lorem ipsum", re.IGNORECASE)
LINE = re.compile(r"([^\n]*\n|[^\n]+$)")
SENTENCE_END = re.compile("[–.!?,;•/|…]")
NSFW_WORDS = ("nsfw", "porn", "explicit")
PIPELINE_TOP_K = 5  # the transformers image-classification pipeline returns its 5 best labels

# Reasons, in the order the rules run (the first rule a row breaks is the one recorded).
TEXT_REASONS = (
    "text_colon_end",
    "text_ellipsis_lines",
    "text_mean_word_length",
    "text_symbol_word_ratio",
    "text_html_entity",
    "text_id_card",
    "text_no_punctuation",
    "text_special_characters",
    "text_watermark",
    "text_curly_brackets",
    "text_capital_words",
    "text_lorem_ipsum",
    "text_unique_words",
    "text_bullet_lines",
    "text_javascript_lines",
)
UNSUPPORTED_FORMAT, TOO_SMALL, TOO_LARGE = "unsupported_format", "too_small", "too_large_resolution"
ASPECT_RATIO, NSFW = "aspect_ratio_out_of_range", "nsfw"


def lines_of(text: str, normalizer=None) -> list[str]:
    """The text's lines (each with its newline), passed through ``normalizer``, blank ones left out."""
    lines = [m.group(0) for m in LINE.finditer(text)]
    if normalizer is not None:
        lines = [normalizer(line) for line in lines]
    return [line for line in lines if line.strip()]


def normalize(text: str) -> str:
    """Punctuation removed, lowercased, whitespace collapsed, NFD: the lines the javascript rule reads."""
    text = text.translate(str.maketrans("", "", string.punctuation)).lower()
    return unicodedata.normalize("NFD", re.sub(r"\s+", " ", text.strip()))


def joined_text(question, answer) -> str | None:
    """DataFlow-MM's text: ``question + " " + answer`` (a missing part left out, the space kept after a
    question); None when neither is there. Null cells count as missing, other values as their text."""
    parts = ["" if is_null(v) else v if isinstance(v, str) else str(v) for v in (question, answer)]
    text = (f"{parts[0]} " if parts[0] else "") + parts[1]
    return text or None


def _checks_image(value) -> bool:
    """A cell DataFlow-MM checks as an image: anything but a null (text-only rows skip the image rules)."""
    return not is_null(value)


def image_facts(source, base_dir: str | None, max_pixels: int | None) -> tuple[int, int, str | None]:
    """Displayed (width, height) and format from the header. Module-level so worker processes can run it."""
    info = image_info(source, base_dir, max_pixels=max_pixels)
    return info["width"], info["height"], info["format"]


@OPERATOR_REGISTRY.register()
class RuleBaseFilter(RowFilter):
    """Drops multimodal rows whose text breaks one of DataFlow-MM's 15 heuristics, or whose image is too
    small, too large, too narrow or wide, or NSFW to an image classifier.

    The text is the question and the answer joined as DataFlow-MM joins them (``question + " " +
    answer``); a row without either has no text rules applied. The rules run in this order, and the first
    one broken is the row's reason:

    1. ``text_colon_end``: the text ends with ``:``;
    2. ``text_ellipsis_lines``: a share of at least `ellipsis_threshold` of its non-blank lines ends with
       ``...`` or ``…``;
    3. ``text_mean_word_length``: the mean length of its whitespace-separated words is under
       `mean_word_length_min` or at least `mean_word_length_max`;
    4. ``text_symbol_word_ratio``: ``#``, ``...`` and ``…`` counted per word reach `symbol_word_ratio_threshold`;
    5. ``text_html_entity``: an HTML entity (``&nbsp;``, ``&lt``, ``＆amp；``, ...) appears;
    6. ``text_id_card``: ID-card wording (``id number``, ``identity``, ``身份``, ...) appears at least
       `id_card_threshold` times;
    7. ``text_no_punctuation``: a sentence (split at ``–.!?,;•/|…``) has more than `no_punc_threshold` words;
    8. ``text_special_characters``: ``u200e``, ``&#247;``, ``? :``, ``�``, ``□``, ``{/U}`` or a written
       emoji code point (``U+1F600``) appears;
    9. ``text_watermark``: one of `watermarks` (regular expressions, case-sensitive) is found;
    10. ``text_curly_brackets``: ``{`` and ``}`` make at least `curly_bracket_threshold` of the characters;
    11. ``text_capital_words``: more than `capital_words_threshold` of the words are upper case (one-letter
        words such as "I" and "A" count);
    12. ``text_lorem_ipsum``: "lorem ipsum" per character exceeds `lorem_ipsum_threshold` (at the default,
        any occurrence);
    13. ``text_unique_words``: distinct lowercased words are at most `unique_words_threshold` of the words;
    14. ``text_bullet_lines``: more than `bulletpoint_threshold` of the lines start with a bullet (``•``,
        ``▶``, ``■``, ``–``, ...);
    15. ``text_javascript_lines``: a text of more than 3 lines has fewer than `javascript_threshold` lines
        without the word "javascript".

    Then the image, when the row has one (a null cell is a text-only row): an unreadable image is
    rejected with the loader's reason (``missing``, ``truncated``, ``not_an_image``, ...); then
    ``too_small`` (width under `min_image_width` or height under `min_image_height`),
    ``too_large_resolution`` (over `max_image_width` / `max_image_height`), ``aspect_ratio_out_of_range``
    (width / height outside [`min_aspect_ratio`, `max_aspect_ratio`]) and, with `filter_nsfw_images`,
    ``nsfw``: a label naming "nsfw", "porn" or "explicit" among the classifier's five best scores above
    `nsfw_threshold`. Rows whose text fails are not opened. Every dropped row is in the rejected file
    with its reason and a detail giving the value and the bound.

    Differences from DataFlow-MM:

    - the NSFW classifier loads on first `run` (DataFlow-MM: in `__init__`), from a local folder, the
      local Hugging Face cache or a first-use download, and stays loaded; it scores images in batches of
      `batch_size` through `AutoModelForImageClassification` with the pipeline's scoring rule (softmax
      for single-label models), fp16 on cuda (DataFlow-MM: the fp32 pipeline, one image at a time);
      `nsfw_model_name` chooses another classifier;
    - without the NSFW check only the image header is read (DataFlow-MM decodes every image): a file
      whose header and end marker are intact but whose middle is corrupt passes; sizes are as displayed,
      after EXIF orientation (DataFlow-MM: as stored; its classifier sees the image turned upright);
      the classifier sees our loader's RGB (transparency composited onto white, first frame);
      images given as `{bytes, path}` dicts and relative paths (against the input file's folder) are
      read (DataFlow-MM rejects dicts and resolves paths against the working directory);
    - a null image cell (None or NaN) means a text-only row and skips the image rules (DataFlow-MM skips
      None but rejects NaN); null question / answer cells are missing text (DataFlow-MM adds the word
      "nan"); a question or answer column that is not in the table counts as no text, as DataFlow-MM;
    - DataFlow-MM's image format whitelist never applies (it checks the format after converting to RGB,
      which clears it); `allowed_formats` turns such a check on;
    - dropped rows are in the rejected file with the rule that dropped them (DataFlow-MM: a count in
      the log); `num_workers` reads image headers in parallel; `run` returns None, as DataFlow-MM.

    Parameters:
        ellipsis_threshold: share of lines ending with "..." / "…" at or above which the text is dropped
        mean_word_length_min: mean word length under which the text is dropped
        mean_word_length_max: mean word length at or above which the text is dropped
        symbol_word_ratio_threshold: ("#", "...", "…") per word at or above which the text is dropped
        id_card_threshold: number of ID-card phrases at or above which the text is dropped
        no_punc_threshold: most words a sentence may have without punctuation
        curly_bracket_threshold: share of "{" and "}" characters at or above which the text is dropped
        capital_words_threshold: share of upper-case words above which the text is dropped
        lorem_ipsum_threshold: "lorem ipsum" occurrences per character above which the text is dropped
        unique_words_threshold: share of distinct words at or below which the text is dropped
        bulletpoint_threshold: share of lines starting with a bullet above which the text is dropped
        javascript_threshold: fewest lines without "javascript" a text of more than 3 lines must have
        watermarks: regular expressions (case-sensitive) whose match drops the text; empty = no check
        min_image_width: narrowest image kept, in pixels
        min_image_height: lowest image kept, in pixels
        max_image_width: widest image kept, in pixels
        max_image_height: tallest image kept, in pixels
        min_aspect_ratio: smallest width / height kept
        max_aspect_ratio: largest width / height kept
        filter_nsfw_images: run the NSFW classifier on the images (False: no model is loaded)
        nsfw_threshold: an NSFW label scored above this drops the image
        batch_size: images per classifier forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        nsfw_model_name: the image classifier (a local folder or a Hugging Face repo id); DataFlow-MM's
            is `Falconsai/nsfw_image_detection`
        allowed_formats: image formats kept (as Pillow names them: "JPEG", "PNG", ...); None = any
            format, as DataFlow-MM in effect
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder), bytes,
            or a `{bytes, path}` dict; null cells are text-only rows (DataFlow-MM's default is "text")
        input_question_key: column holding the question (None or an absent column: no question)
        input_answer_key: column holding the answer (None or an absent column: no answer)
    """

    description = "DataFlow-MM's rule filter: 15 text heuristics on question + answer, image size / ratio / NSFW."
    description_zh = "DataFlow-MM 规则过滤：对问题+答案文本做 15 条启发式检查，并检查图像尺寸、宽高比与 NSFW 内容。"
    loads_model = True
    model_params = {"nsfw_model_name": "image_classifier"}

    example = Example.on_example_data(
        "RuleBaseFilter",
        """
        op = RuleBaseFilter(filter_nsfw_images=False)
        op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key="caption")
        """,
        show=["image", "caption"],
        rejected_show=["image", "caption", "reason", "detail"],
    )

    def __init__(
        self,
        ellipsis_threshold: float = 0.3,
        mean_word_length_min: float = 3,
        mean_word_length_max: float = 20,
        symbol_word_ratio_threshold: float = 0.4,
        id_card_threshold: int = 3,
        no_punc_threshold: int = 112,
        curly_bracket_threshold: float = 0.025,
        capital_words_threshold: float = 0.2,
        lorem_ipsum_threshold: float = 3e-8,
        unique_words_threshold: float = 0.1,
        bulletpoint_threshold: float = 0.9,
        javascript_threshold: int = 3,
        watermarks: list[str] | tuple[str, ...] = ("Copyright", "Watermark", "Confidential"),
        min_image_width: int = 16,
        min_image_height: int = 16,
        max_image_width: int = 8192,
        max_image_height: int = 8192,
        min_aspect_ratio: float = 0.001,
        max_aspect_ratio: float = 1000,
        filter_nsfw_images: bool = True,
        nsfw_threshold: float = 0.5,
        batch_size: int = 32,
        device: str | None = None,
        nsfw_model_name: str = DEFAULT_NSFW_MODEL,
        allowed_formats: list[str] | tuple[str, ...] | None = None,
        num_workers: int | None = None,
    ):
        self.ellipsis_threshold = ellipsis_threshold
        self.mean_word_length_min = mean_word_length_min
        self.mean_word_length_max = mean_word_length_max
        self.symbol_word_ratio_threshold = symbol_word_ratio_threshold
        self.id_card_threshold = id_card_threshold
        self.no_punc_threshold = no_punc_threshold
        self.curly_bracket_threshold = curly_bracket_threshold
        self.capital_words_threshold = capital_words_threshold
        self.lorem_ipsum_threshold = lorem_ipsum_threshold
        self.unique_words_threshold = unique_words_threshold
        self.bulletpoint_threshold = bulletpoint_threshold
        self.javascript_threshold = javascript_threshold
        if isinstance(watermarks, str):
            watermarks = [watermarks]
        self.watermarks = list(watermarks or [])
        try:  # a bad pattern is a clear error now, not a crash mid-run
            self._watermark = re.compile("|".join(self.watermarks)) if self.watermarks else None
        except re.error as exc:
            raise ValueError(f"watermarks: {self.watermarks!r} is not a valid regular expression ({exc})") from None
        self.min_image_width = min_image_width
        self.min_image_height = min_image_height
        self.max_image_width = max_image_width
        self.max_image_height = max_image_height
        self.min_aspect_ratio = min_aspect_ratio
        self.max_aspect_ratio = max_aspect_ratio
        self.filter_nsfw_images = filter_nsfw_images
        self.nsfw_threshold = nsfw_threshold
        self.batch_size = batch_size
        self.device = device
        self.nsfw_model_name = nsfw_model_name
        self.allowed_formats = None if allowed_formats is None else {f.upper() for f in allowed_formats}
        self.num_workers = num_workers
        self._classifier = None

    # ------------------------------------------------------------------------------------------ text
    def text_problem(self, text: str) -> tuple[str, str] | None:
        """The first of the 15 text rules that ``text`` breaks, as (reason, detail), or None."""
        words = text.split()
        n = len(words)
        lines = lines_of(text)
        if text.endswith(":"):
            return "text_colon_end", "the text ends with ':'"
        if lines:
            share = sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines)
            if share >= self.ellipsis_threshold:
                return "text_ellipsis_lines", f"{share:.3g} of lines end with an ellipsis >= {self.ellipsis_threshold}"
        if n:
            mean = sum(len(w) for w in words) / n
            if mean < self.mean_word_length_min or mean >= self.mean_word_length_max:
                bounds = f"[{self.mean_word_length_min}, {self.mean_word_length_max})"
                return "text_mean_word_length", f"mean word length {mean:.3g} not in {bounds}"
            ratio = sum(text.count(s) for s in SYMBOLS) / n
            if ratio >= self.symbol_word_ratio_threshold:
                return "text_symbol_word_ratio", f"{ratio:.3g} symbols per word >= {self.symbol_word_ratio_threshold}"
        entity = next((e for e in HTML_ENTITIES if e in text), None)
        if entity:
            return "text_html_entity", f"HTML entity {entity!r}"
        ids = len(ID_PATTERN.findall(text))
        if ids >= self.id_card_threshold:
            return "text_id_card", f"{ids} ID-card phrases >= {self.id_card_threshold}"
        longest = max((len(s.split()) for p in text.split("\n") if p.strip() for s in SENTENCE_END.split(p)), default=0)
        if longest > self.no_punc_threshold:
            return "text_no_punctuation", f"{longest} words without punctuation > {self.no_punc_threshold}"
        special = next((m.group(0) for p in SPECIAL_CHARACTERS if (m := p.search(text))), None)
        if special is not None:
            return "text_special_characters", f"special characters {special!r}"
        mark = self._watermark.search(text) if self._watermark else None
        if mark:
            return "text_watermark", f"watermark {mark.group(0)!r}"
        brackets = (text.count("{") + text.count("}")) / len(text)
        if brackets >= self.curly_bracket_threshold:
            return (
                "text_curly_brackets",
                f"{brackets:.3g} of characters are curly brackets >= {self.curly_bracket_threshold}",
            )
        if n:
            caps = sum(map(str.isupper, words)) / n
            if caps > self.capital_words_threshold:
                return "text_capital_words", f"{caps:.3g} of words upper case > {self.capital_words_threshold}"
        lorem = len(LOREM.findall(text.lower())) / len(text)
        if lorem > self.lorem_ipsum_threshold:
            return "text_lorem_ipsum", f"'lorem ipsum' {lorem:.3g} per character > {self.lorem_ipsum_threshold}"
        if n:
            unique = len(set(text.lower().split())) / n
            if unique <= self.unique_words_threshold:
                return "text_unique_words", f"{unique:.3g} of words distinct <= {self.unique_words_threshold}"
        if lines:
            bullets = sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines)
            if bullets > self.bulletpoint_threshold:
                return "text_bullet_lines", f"{bullets:.3g} of lines start with a bullet > {self.bulletpoint_threshold}"
        normalized = lines_of(text, normalize)
        without = sum("javascript" not in line for line in normalized)
        if not (len(normalized) <= 3 or without >= self.javascript_threshold):
            return (
                "text_javascript_lines",
                f"{without} of {len(normalized)} lines without 'javascript' < {self.javascript_threshold}",
            )
        return None

    # ------------------------------------------------------------------------------------------ images
    def classifier(self):
        """The NSFW image classifier, loaded on first use and kept."""
        if self._classifier is None:
            from dataflow.models.image_classifier import load_image_classifier

            self._classifier = load_image_classifier(self.nsfw_model_name, self.device, self.batch_size)
        return self._classifier

    def missing_models(self, keys: dict | None = None) -> list[str]:
        return super().missing_models(keys) if self.filter_nsfw_images else []

    def _size_verdict(self, verdict: Verdict, at: np.ndarray, sources: list, base_dir: str) -> None:
        """Unreadable headers, formats, sizes and aspect ratios of the rows ``at``."""
        results = map_items(
            image_facts,
            [sources[i] for i in at],
            num_workers=self.num_workers,
            desc="RuleBaseFilter headers",
            base_dir=base_dir,
            max_pixels=DEFAULT_MAX_PIXELS,
        )
        n = len(verdict.reason)
        width, height = np.full(n, np.nan), np.full(n, np.nan)
        fmt = np.full(n, None, dtype=object)
        for i, r in zip(at, results):
            if r.error is not None:
                verdict.reason[i], verdict.detail[i] = r.error, r.detail
            else:
                width[i], height[i], fmt[i] = r.value
        known = ~np.isnan(width)
        if self.allowed_formats is not None:
            bad = known & np.array([f is not None and f.upper() not in self.allowed_formats for f in fmt])
            verdict.drop(
                bad,
                UNSUPPORTED_FORMAT,
                lambda hit: [f"format {fmt[i]} not in {sorted(self.allowed_formats)}" for i in hit],
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            small = known & ((width < self.min_image_width) | (height < self.min_image_height))
            large = known & ((width > self.max_image_width) | (height > self.max_image_height))
            ratio = width / height
        size = lambda hit: [f"{int(width[i])}x{int(height[i])}" for i in hit]
        verdict.drop(
            small, TOO_SMALL, lambda hit: [f"{s} < {self.min_image_width}x{self.min_image_height}" for s in size(hit)]
        )
        verdict.drop(
            large, TOO_LARGE, lambda hit: [f"{s} > {self.max_image_width}x{self.max_image_height}" for s in size(hit)]
        )
        outside = known & ((ratio < self.min_aspect_ratio) | (ratio > self.max_aspect_ratio))
        bounds = f"[{self.min_aspect_ratio}, {self.max_aspect_ratio}]"
        verdict.drop(outside, ASPECT_RATIO, lambda hit: [f"aspect_ratio {ratio[i]:.4g} not in {bounds}" for i in hit])

    def _nsfw_verdict(self, verdict: Verdict, at: np.ndarray, sources: list, base_dir: str) -> None:
        """Decode the rows ``at`` and drop those the classifier finds NSFW (or cannot decode)."""
        from dataflow.models.image_classifier import preprocess_image

        classifier = self.classifier()
        words = [any(w in label.lower() for w in NSFW_WORDS) for label in classifier.labels]
        top_k = min(PIPELINE_TOP_K, len(classifier.labels))
        for start, results in stream_items(
            preprocess_image,
            [sources[i] for i in at],
            window=max(self.batch_size * 4, 64),
            num_workers=self.num_workers,
            desc="RuleBaseFilter nsfw",
            base_dir=base_dir,
            processor=classifier.processor,
            draft_size=None,  # full decode, as the pipeline DataFlow-MM calls sees the image
            max_pixels=DEFAULT_MAX_PIXELS,
        ):
            rows = at[start : start + len(results)]
            for i, r in zip(rows, results):
                if r.error is not None:
                    verdict.reason[i], verdict.detail[i] = r.error, r.detail
            good = [(i, r.value) for i, r in zip(rows, results) if r.error is None]
            scores = classifier.scores([v for _, v in good]) if good else np.zeros((0, len(words)))
            for (i, _), row in zip(good, scores):
                top = np.argsort(-row, kind="stable")[:top_k]
                hit = next((j for j in top if words[j] and row[j] > self.nsfw_threshold), None)
                if hit is not None:
                    verdict.reason[i] = NSFW
                    verdict.detail[i] = f"{classifier.labels[hit]} {row[hit]:.4g} > {self.nsfw_threshold}"

    # ------------------------------------------------------------------------------------------ filter
    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_image_key: str,
        input_question_key: str | None,
        input_answer_key: str | None,
    ) -> Verdict:
        sources = image_column(df, input_image_key, type(self).__name__)
        n = len(df)
        texts = []
        for key in (input_question_key, input_answer_key):
            if key is not None and key not in df.columns:
                logger.warning("RuleBaseFilter: no column %r: rows have no such text (as DataFlow-MM)", key)
            texts.append(df[key].tolist() if key is not None and key in df.columns else [None] * n)
        verdict = Verdict(np.full(n, None, dtype=object), np.full(n, None, dtype=object))
        for i, (question, answer) in enumerate(zip(*texts)):
            text = joined_text(question, answer)
            problem = self.text_problem(text) if text and text.strip() else None
            if problem:
                verdict.reason[i], verdict.detail[i] = problem
        # Images of the rows whose text passed (DataFlow-MM stops at the first failing check).
        at = np.flatnonzero(verdict.kept & np.array([_checks_image(s) for s in sources], dtype=bool))
        if len(at):
            self._size_verdict(verdict, at, sources, base_dir)
        at = np.flatnonzero(verdict.kept & np.array([_checks_image(s) for s in sources], dtype=bool))
        if self.filter_nsfw_images and len(at):
            self._nsfw_verdict(verdict, at, sources, base_dir)
        return verdict

    def required_columns(self, keys: dict) -> dict[str, str]:
        # The question and answer columns are optional, as in DataFlow-MM; only the image column is read for sure.
        return {"input_image_key": keys["input_image_key"]} if keys.get("input_image_key") else {}

    def output_columns(self, keys: dict) -> list[str]:
        return []

    def run(
        self,
        storage,
        input_image_key: str = "text",
        input_question_key: str | None = "question",
        input_answer_key: str | None = "answer",
    ) -> None:
        self.filter(
            storage,
            input_image_key=input_image_key,
            input_question_key=input_question_key,
            input_answer_key=input_answer_key,
        )
