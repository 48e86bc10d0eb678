"""ImageDiversityFilter: DataFlow-MM's joint text (TF-IDF) and image (pHash) near-duplicate filter.

Also DataFlow-MM's two helpers, with their calls: ``TextDuplicateFilter.check_similarity(text)`` and
``ImageDuplicateFilter.check_distance(image_path)``. Each keeps a memory of what it accepted so far and
answers for one item at a time, so the operator's outcome depends on row order, as DataFlow-MM's does.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from dataflow.algorithms.hamming_search import hamming_distance
from dataflow.algorithms.hashing import MAX_HASH_SIZE, phash
from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import OperatorABC, Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import Verdict
from dataflow.media import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from dataflow.operators.core_vision._hashing import compute_hashes
from dataflow.storage.provenance import row_name

TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern: words of two or more characters
MIN_TEXT_CHARS = 3  # shorter texts are never accepted (DataFlow-MM's rule)


class TextDuplicateFilter:
    """Accepts a text unless its TF-IDF cosine similarity to a text accepted earlier reaches the threshold.

    The same arithmetic as DataFlow-MM's helper, which fits scikit-learn's ``TfidfVectorizer`` (its
    defaults: lowercased words of two or more characters, raw counts, smooth idf ``ln((1 + n) / (1 + df))
    + 1``, L2-normalised rows) on the last ``max_corpus`` accepted texts plus the new one, for every
    text. Here the document frequencies of that window are kept up to date instead, so each check costs
    one pass over the window's words and scikit-learn is not needed.
    """

    def __init__(self, similarity_thresh: float = 0.8, max_corpus: int = 10000):
        if max_corpus < 1:
            raise ValueError(f"max_corpus must be at least 1, got {max_corpus}")
        self.sim_thresh = similarity_thresh
        self.max_corpus = max_corpus
        self._texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._df = np.zeros(0, dtype=np.int64)  # per word id: how many texts of the window contain it
        # The accepted texts' (word id, count) entries end to end, each tagged with its text's acceptance
        # index; the window is a suffix of them, so a check reads one contiguous slice.
        self._words = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.float64)
        self._doc = np.zeros(0, dtype=np.int64)
        self._used = 0
        self._starts: list[int] = []  # per accepted text: where its entries start (counting dropped ones)
        self._dropped = 0  # entries of texts that left the window and were compacted away
        self._first = 0  # acceptance index of the oldest text in the window

    def check_similarity(self, text) -> tuple[bool, float]:
        """``(accepted, highest similarity to the window)``; an accepted text joins the window."""
        accepted, similarity, _ = self.check(text)
        return accepted, similarity

    def check(self, text) -> tuple[bool, float, int | None]:
        """As :meth:`check_similarity`, plus the acceptance index of the most similar text (None: none)."""
        if not isinstance(text, str) or len(text) < MIN_TEXT_CHARS:
            return False, 0.0, None
        ids, counts = self._encode(text)
        if not self._texts:
            self._accept(text, ids, counts)
            return True, 0.0, None
        sims = self._similarities(ids, counts)
        best = int(np.argmax(sims))
        similarity = float(sims[best])
        if similarity < self.sim_thresh:
            self._accept(text, ids, counts)
            return True, similarity, self._first + best
        return False, similarity, self._first + best

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        words = Counter(TOKEN.findall(text.lower()))
        for word in words:
            self._vocab.setdefault(word, len(self._vocab))
        if len(self._vocab) > len(self._df):
            self._df = np.concatenate([self._df, np.zeros(len(self._vocab) - len(self._df), dtype=np.int64)])
        return (
            np.fromiter((self._vocab[w] for w in words), dtype=np.int64, count=len(words)),
            np.fromiter(words.values(), dtype=np.float64, count=len(words)),
        )

    def _similarities(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Cosine of the new text's TF-IDF row with each window text's, the corpus being window + text."""
        n_window = len(self._texts) - self._first
        lo = self._starts[self._first] - self._dropped
        words, doc = self._words[lo : self._used], self._doc[lo : self._used] - self._first
        df = self._df.copy()
        df[ids] += 1
        idf = np.log((n_window + 2) / (df + 1)) + 1  # n = n_window + 1 texts, smoothed as sklearn does
        query = np.zeros(len(df))
        query[ids] = counts * idf[ids]
        query_norm = np.sqrt(np.square(query[ids]).sum())
        weights = self._counts[lo : self._used] * idf[words]
        norms = np.sqrt(np.bincount(doc, weights=weights * weights, minlength=n_window))
        dots = np.bincount(doc, weights=weights * query[words], minlength=n_window)
        with np.errstate(invalid="ignore", divide="ignore"):
            sims = dots / (norms * query_norm)
        # A text without a word of two letters has an all-zero row: its cosine is 0, as sklearn's normalize gives.
        return np.where((norms > 0) & (query_norm > 0), sims, 0.0)

    def _accept(self, text: str, ids: np.ndarray, counts: np.ndarray) -> None:
        index = len(self._texts)
        self._texts.append(text)
        self._starts.append(self._used + self._dropped)
        need = self._used + len(ids)
        if need > len(self._words):  # grow by doubling: appends cost O(1) each on average
            size = max(2 * len(self._words), need, 1024)
            self._words, self._counts, self._doc = (np.resize(a, size) for a in (self._words, self._counts, self._doc))
        self._words[self._used : need], self._counts[self._used : need], self._doc[self._used : need] = (
            ids,
            counts,
            index,
        )
        self._used = need
        self._df[ids] += 1
        if index + 1 - self._first > self.max_corpus:
            lo = self._starts[self._first] - self._dropped
            hi = self._starts[self._first + 1] - self._dropped
            self._df[self._words[lo:hi]] -= 1
            self._first += 1
            lo = self._starts[self._first] - self._dropped
            if lo > self._used // 2:  # entries out of the window take half the buffer: move the rest down
                for a in (self._words, self._counts, self._doc):
                    a[: self._used - lo] = a[lo : self._used]
                self._used -= lo
                self._dropped += lo


class ImageDuplicateFilter:
    """Accepts an image unless its pHash is within ``distance_thresh`` bits of an image accepted earlier.

    DataFlow-MM's helper, with the same pHash bit for bit as ``imagehash.phash`` (from
    ``dataflow.algorithms.hashing``): an image is compared with the last ``max_imgs`` accepted ones.
    """

    def __init__(self, hash_size: int = 8, distance_thresh: int = 5, max_imgs: int = 10000):
        if not 2 <= hash_size <= MAX_HASH_SIZE:
            raise ValueError(f"hash_size must be between 2 and {MAX_HASH_SIZE} (a 64-bit hash), got {hash_size}")
        if max_imgs < 1:
            raise ValueError(f"max_imgs must be at least 1, got {max_imgs}")
        self.hash_size = hash_size
        self.dist_thresh = distance_thresh
        self.max_imgs = max_imgs
        self._hashes = np.zeros(1024, dtype=np.uint64)  # accepted hashes in order; the first _count are used
        self._count = 0

    def check_distance(self, image_path, base_dir: str | None = None) -> tuple[bool, int | None]:
        """``(accepted, smallest distance to the accepted images)``; an unreadable image is ``(False, None)``."""
        try:
            image = load_image(image_path, base_dir)
        except ImageLoadError:
            return False, None
        accepted, distance, _ = self.check_hash(phash([image], self.hash_size)[0])
        return accepted, distance

    def check_hash(self, value) -> tuple[bool, int | None, int | None]:
        """As :meth:`check_distance` for a hash already computed, plus the position (in acceptance order)
        of the nearest accepted image."""
        value = np.uint64(value)
        if not self._count:
            self._append(value)
            return True, None, None
        first = max(0, self._count - self.max_imgs)
        distances = hamming_distance(self._hashes[first : self._count], value)
        nearest = int(np.argmin(distances))
        distance = int(distances[nearest])
        if distance > self.dist_thresh:
            self._append(value)
            return True, distance, first + nearest
        return False, distance, first + nearest

    def _append(self, value: np.uint64) -> None:
        if self._count == len(self._hashes):  # grow by doubling: appends cost O(1) each on average
            self._hashes = np.resize(self._hashes, 2 * len(self._hashes))
        self._hashes[self._count] = value
        self._count += 1


@OPERATOR_REGISTRY.register()
class ImageDiversityFilter(OperatorABC):
    """Keeps a row only when both its text and its image are new: DataFlow-MM's diversity filter.

    Rows are read in order. A text is new when its TF-IDF cosine similarity to every text accepted so
    far is below ``text_thresh``; an image is new when its pHash differs in more than ``img_dist_thresh``
    bits from every image accepted so far. The two memories are separate, as in DataFlow-MM: a row
    dropped for its image still adds its new text, and the other way round. Texts shorter than three
    characters (or null) are never new. Kept rows get ``text_similarity`` (the highest similarity to an
    earlier text; 0 for the first) and ``hash_distance`` (the smallest distance to an earlier image; null
    for the first). Dropped rows go to the rejected file with reason: the image loader's code for an
    unreadable image (``missing``, ``truncated``, ...), ``short_text``, ``similar_text`` or
    ``near_duplicate`` (the image), checked in that order, with ``duplicate_of`` naming the row whose text
    or image it matched, and both values.

    Differences from DataFlow-MM:

    - TF-IDF without scikit-learn: the same formulas (`TfidfVectorizer` defaults) on the same corpus,
      equal to scikit-learn's similarities within float rounding (about 1e-15); a corpus without any word
      of two letters gives similarity 0 where scikit-learn raises "empty vocabulary";
    - pHash without imagehash: bit for bit `imagehash.phash`, on the image as the loader reads it (EXIF
      orientation applied, transparency onto white; DataFlow-MM hashes the stored pixels and drops the
      alpha channel); `hash_size` is at most 8 (a 64-bit hash);
    - each `run` starts with empty memories (DataFlow-MM's persist across runs of one instance, so a
      second run compares with the first run's texts and images);
    - a null, empty or non-text value counts as a short text (DataFlow-MM raises on NaN);
    - images may be paths (relative to the input file's folder, then the working directory), bytes or
      `{bytes, path}` dicts, hashed in `num_workers` processes; DataFlow-MM needs a path that exists from
      the working directory;
    - unreadable images are rejected with their reason code, and every dropped row says why; DataFlow-MM
      drops them without a record;
    - options: `max_corpus` and `max_imgs` (DataFlow-MM fixes both at 10000), the two score columns
      (None: not written).

    Parameters:
        text_thresh: TF-IDF cosine similarity at or above which a text repeats an earlier one
        hash_size: pHash side: `hash_size ** 2` bits, 2 to 8
        img_dist_thresh: pHash distances up to this many bits make an image a repeat; kept images differ
            from every earlier one in more bits
        max_corpus: how many of the last accepted texts a text is compared with (and the TF-IDF corpus)
        max_imgs: how many of the last accepted images an image is compared with
        num_workers: worker processes that decode and hash images; None = one per CPU core (inputs under
            48 images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict; DataFlow-MM's default is `"image_path"`
        input_text_key: column holding the text (caption)
        output_text_similarity_key: kept rows get their highest text similarity to an earlier text here;
            None = no column
        output_hash_distance_key: kept rows get their smallest pHash distance to an earlier image here;
            None = no column
    """

    description = (
        "DataFlow-MM's diversity filter: drops rows whose text (TF-IDF cosine) or image (pHash distance) "
        "repeats an earlier row's."
    )
    description_zh = (
        "按 DataFlow-MM 的多样性规则过滤：文本（TF-IDF 余弦）或图像（pHash 距离）与之前已保留样本重复的行被剔除。"
    )
    execution = "table"  # each row is compared with the rows accepted before it
    thresholds = (
        Threshold("text_thresh", "output_text_similarity_key", "dup", default="text_similarity"),
        Threshold("img_dist_thresh", "output_hash_distance_key", "min", default="hash_distance"),
    )

    example = Example.on_example_data(
        "ImageDiversityFilter",
        """
        op = ImageDiversityFilter(text_thresh=0.8, hash_size=8, img_dist_thresh=5)
        op.run(storage.step(), input_image_key="image", input_text_key="caption")
        """,
        show=["image", "caption", "text_similarity", "hash_distance"],
        digits=3,
        rejected_show=["image", "reason", "duplicate_of", "text_similarity", "hash_distance"],
        rejected_rows=["images/scene_00_copy.jpg", "images/scene_01_small.jpg", "images/missing.jpg"],
    )

    def __init__(
        self,
        text_thresh: float = 0.8,
        hash_size: int = 8,
        img_dist_thresh: int = 5,
        max_corpus: int = 10000,
        max_imgs: int = 10000,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.text_thresh = text_thresh
        self.hash_size = hash_size
        self.img_dist_thresh = img_dist_thresh
        self.max_corpus = max_corpus
        self.max_imgs = max_imgs
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self._fresh_memories()

    def _fresh_memories(self) -> None:
        self.text_filter = TextDuplicateFilter(similarity_thresh=self.text_thresh, max_corpus=self.max_corpus)
        self.img_filter = ImageDuplicateFilter(
            hash_size=self.hash_size, distance_thresh=self.img_dist_thresh, max_imgs=self.max_imgs
        )

    def output_columns(self, keys: dict) -> list[str]:
        return [c for c in (keys.get("output_text_similarity_key"), keys.get("output_hash_distance_key")) if c]

    def run(
        self,
        storage,
        input_image_key: str = "image_path",
        input_text_key: str = "text",
        output_text_similarity_key: str | None = "text_similarity",
        output_hash_distance_key: str | None = "hash_distance",
    ) -> list[str]:
        """Returns ``[input_image_key, input_text_key]``, as DataFlow-MM does."""
        self._fresh_memories()
        df = storage.read("dataframe")
        name = type(self).__name__
        sources = image_column(df, input_image_key, name)
        if input_text_key not in df.columns:
            raise KeyError(
                f"{name}: input_text_key={input_text_key!r} is not a column "
                f"(columns: {', '.join(map(str, df.columns))})"
            )
        hashes, results = compute_hashes(
            sources,
            storage.image_base,
            method="phash",
            hash_size=self.hash_size,
            draft=False,  # a full decode, as imagehash hashes it
            num_workers=self.num_workers,
            max_pixels=self.max_pixels,
        )
        n = len(df)
        similarity = np.zeros(n)
        distance = np.full(n, None, dtype=object)
        verdict = Verdict(np.full(n, None, dtype=object), np.full(n, None, dtype=object))
        duplicate_of = np.full(n, None, dtype=object)
        names = [row_name(v, label) for v, label in zip(sources, df.index)]
        text_rows: list[int] = []  # row of each accepted text / image, by acceptance order
        image_rows: list[int] = []
        for i, (text, result) in enumerate(zip(df[input_text_key].tolist(), results)):
            text_ok, similarity[i], text_match = self.text_filter.check(text)
            if text_ok:
                text_rows.append(i)
            image_ok, image_match = False, None
            if result.error is None:
                image_ok, distance[i], image_match = self.img_filter.check_hash(hashes[i])
                if image_ok:
                    image_rows.append(i)
            if result.error is not None:
                verdict.reason[i], verdict.detail[i] = result.error, result.detail
            elif not text_ok and text_match is None:
                verdict.reason[i] = "short_text"
                verdict.detail[i] = f"{len(text)} characters" if isinstance(text, str) else "no text"
            elif not text_ok:
                verdict.reason[i], duplicate_of[i] = "similar_text", names[text_rows[text_match]]
                verdict.detail[i] = f"text similarity {similarity[i]:.4g} >= text_thresh {self.text_thresh}"
            elif not image_ok:
                verdict.reason[i], duplicate_of[i] = "near_duplicate", names[image_rows[image_match]]
                verdict.detail[i] = f"pHash distance {distance[i]} <= img_dist_thresh {self.img_dist_thresh}"
        text_key = output_text_similarity_key or "text_similarity"
        distance_key = output_hash_distance_key or "hash_distance"
        for key, values in ((output_text_similarity_key, similarity), (output_hash_distance_key, distance)):
            if key:
                df[key] = pd.Series(values, index=df.index, dtype=float if values is similarity else object)
        verdict.columns["duplicate_of"] = lambda at: duplicate_of[at]
        verdict.columns[text_key] = lambda at: similarity[at]
        verdict.columns[distance_key] = lambda at: distance[at]
        kept, rejected = verdict.split(df)
        storage.write(kept, rejected=rejected)
        return [input_image_key, input_text_key]
