"""ImageRobustDeduplicateFilter: near duplicates that survive crops, banners and re-framing, verified by geometry."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from dataflow.algorithms import local_features as lf
from dataflow.algorithms.grouping import DuplicateGroups, keep_priority
from dataflow.algorithms.hashing import hash_size_input, phash
from dataflow.algorithms.verified_grouping import grow_groups, shared_key_pairs
from dataflow.core.dedup import Candidates, Decisions, DedupFilter, Pairs, check_keep
from dataflow.core.docs import Example
from dataflow.core.images import concat_rejected, image_column, rejected_unreadable
from dataflow.core.operator import PairView
from dataflow.core.parallel import ItemResult, map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import get_logger
from dataflow.media import DEFAULT_MAX_PIXELS, load_image
from dataflow.media.loader import read_source_bytes

logger = get_logger("dataflow.robust_dedup")

# Candidate search by shared local keys (see benchmarks/nd_variants.py for how these were chosen).
KEY_BITS = 24  # bits of a descriptor per key: a copy's point keeps all 24 about one time in ten
KEY_TABLES = 2  # keys per descriptor (disjoint bit slices)
MIN_SHARED_KEYS = 7  # keys two rows must share to be a candidate pair
MAX_ROWS_PER_KEY = 64  # a key more common than this is a stock pattern, not evidence


class RobustKey(NamedTuple):
    """Phase 1's answer for one row: its local features (small numpy arrays), its file's size in bytes, and
    the features of its mirror image when mirror images are matched."""

    features: lf.LocalFeatures
    file_bytes: int
    flipped: lf.LocalFeatures | None = None


class RobustKeys(NamedTuple):
    """The readable rows' phase 1 answers for phases 2 and 3, with their pHashes computed in one batch."""

    features: list
    hashes: np.ndarray  # uint64
    file_bytes: np.ndarray  # int64
    flipped: list | None = None  # the mirror images' features (mirror=True), else None
    flipped_hashes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)


class Evidence(NamedTuple):
    """Why a dropped row duplicates its kept row (phase 3): the verification, or the hash when close."""

    distance: int  # pHash bits between the two
    inliers: int | None  # None: accepted on the hash alone
    agreement: float | None
    transform: np.ndarray  # the row's original pixels -> the kept row's
    linked: int  # the row it was verified against when not the kept row (a chain), else -1
    crop_box: list[int] | None = None  # the row's extent within the kept image, its pixels
    mirrored: bool = False  # matched as a mirror image (the transform flips)


@dataclasses.dataclass
class VerifiedDecisions(Decisions):
    """Phase 3's decisions with the evidence of each dropped row (None for kept rows)."""

    evidence: list | None = None


def robust_key(source, base_dir: str, n_features: int, max_pixels: int | None, mirror: bool = False) -> RobustKey:
    """Decode once (JPEG draft, grey) into the local features (and the mirror image's with ``mirror``).
    Module level, so worker processes can run it."""
    grey, (width, height, file_bytes) = decode_grey(source, base_dir, lf.ANALYSIS_SIDE // 2, max_pixels)
    # Features measure the decoded copy; transforms are reported in the file's own (upright) pixels.
    original = (width, height)
    features = lf.extract_features(grey, n_features=n_features)._replace(original=original)
    flipped = None
    if mirror:
        flipped = lf.extract_features(np.ascontiguousarray(grey[:, ::-1]), n_features=n_features)
        flipped = flipped._replace(original=original)
    return RobustKey(features, file_bytes, flipped)


def decode_grey(source, base_dir: str | None, draft: int, max_pixels: int | None) -> tuple[np.ndarray, tuple]:
    """The upright grey pixels (JPEG: DCT-scaled, at least ``draft`` px a side, luma only) and the file's
    own upright (width, height, bytes), from one read and one header parse.

    ``load_image(..., draft_size=draft, mode="L")``'s image, except that a colour JPEG's luma is decoded
    directly instead of being computed from decoded RGB (within a few grey levels of it, ~15 % cheaper).
    """
    from dataflow.media.errors import ImageLoadError
    from dataflow.media.loader import TAIL_CHECKED_FORMATS, exif_orientation, open_bytes, truncation_detail

    data, label = read_source_bytes(source, base_dir)
    img = open_bytes(data, label, max_pixels=max_pixels)
    if img.format in TAIL_CHECKED_FORMATS and (detail := truncation_detail(data, img.format, img.size)):
        raise ImageLoadError("truncated", f"{label}: {detail}", label)
    w, h = img.size
    if exif_orientation(img) in (5, 6, 7, 8):  # a quarter turn: the displayed width is the stored height
        w, h = h, w
    if img.format in ("JPEG", "MPO") and img.mode in ("RGB", "YCbCr"):
        img.draft("L", (draft, draft))
    try:
        grey = load_image(img, draft_size=draft, max_pixels=max_pixels, mode="L")
    except ImageLoadError as exc:  # name the file, not the in-memory image
        raise ImageLoadError(exc.reason, (exc.detail or "").replace("<PIL image>", label), label) from None
    return np.asarray(grey), (w, h, len(data))


def frames_agree(a: lf.LocalFeatures, b: lf.LocalFeatures, params: lf.VerifyParams) -> bool:
    """Whether two images whose pHashes nearly agree also look alike frame to frame: their thumbnails, one
    stretched onto the other, pass the pixel check; or, when neither has texture to check (a flat colour:
    every flat image has the same pHash), their mean grey is within 8 levels and their shapes within 1.5x."""
    ta, tb = a.thumb, b.thumb
    stretch = lf.frame_transform((ta.shape[1], ta.shape[0]), (tb.shape[1], tb.shape[0]))
    agreement, blocks = lf.photometric_agreement(ta, tb, stretch, texture=params.block_texture, ncc=params.block_ncc)
    if blocks >= params.min_blocks:
        return agreement >= params.min_agreement
    shapes = (a.original[0] / max(a.original[1], 1)) / (b.original[0] / max(b.original[1], 1))
    return abs(float(ta.mean()) - float(tb.mean())) <= 8 and 1 / 1.5 <= shapes <= 1.5


def flip(size: tuple[int, int]) -> np.ndarray:
    """The transform that mirrors an image of ``size`` left to right (pixel centres at integers)."""
    return np.array([[-1.0, 0.0, size[0] - 1.0], [0.0, 1.0, 0.0]])


def thumb_phashes(thumbs: list) -> np.ndarray:
    """64-bit pHashes of grey thumbnails (area-shrunk to pHash's 32 x 32 input), in one batch: close to,
    not bit for bit, the hash filter's (that one resizes the decoded image with LANCZOS, as imagehash does)."""
    if not thumbs:
        return np.zeros(0, dtype=np.uint64)
    cv2 = lf.require_cv2()
    side = hash_size_input("phash")
    return phash(np.stack([cv2.resize(t, (side, side), interpolation=cv2.INTER_AREA) for t in thumbs]))


@OPERATOR_REGISTRY.register()
class ImageRobustDeduplicateFilter(DedupFilter):
    """Removes near duplicates that are the same photo cropped, re-framed, letterboxed, captioned,
    screenshotted, overlaid with text or a logo, or slightly rotated: every pair is checked by geometry.

    Perceptual hashes miss such copies (a caption band or a 60 % crop moves pHash 20 to 40 bits) and
    embeddings put them where unrelated photos also sit. Here each image is decoded once (JPEG draft, grey,
    320 px) into ORB keypoints and a 128 px thumbnail (its pHash is taken from the thumbnail). Candidate
    pairs are the pairs within ``max_distance`` pHash bits plus the pairs sharing at least seven 24-bit
    slices of their ORB descriptors (slices held by more than 64 rows ignored: a stock corner, a caption
    template; each row keeps its ``max_candidates`` strongest), a set that grows linearly with the rows
    (benchmarks/README.md). A candidate is a duplicate when a similarity transform fitted by RANSAC
    to its matched keypoints has at least ``min_inliers`` inliers, a zoom within ``max_zoom``, puts at least
    ``min_overlap`` of the smaller image inside the other, and, with the duplicate's thumbnail warped onto
    the kept one, at least ``min_agreement`` of the textured 8 x 8 blocks correlate (normalised
    cross-correlation >= 0.9): a crop, a banner, a letterbox or an overlay keeps the pixels, two photos
    of one scene from two camera positions do not (see ``dataflow.algorithms.local_features``). Pairs within
    ``accept_distance`` pHash bits are duplicates without the keypoint check (their thumbnails, one stretched
    onto the other, must still agree; flat images, which all share one pHash, must have the same grey level
    and shape). A similarity never mirrors: mirror
    images match only with ``mirror=True``.

    Groups are grown around representatives in keep order: each candidate of a group is verified against
    the row the group keeps, so a cluster of k copies costs about k verifications, never k squared, and
    every dropped row's numbers are measured against the image it is reported to duplicate. With
    ``transitive=True`` a row that fails against the kept image but passes against the group member that
    brought it joins through that member (``linked_by``), provided the composed transform still puts it
    mostly inside the kept image.

    Kept rows get a group id and size. Dropped rows go to the rejected file with reason ``near_duplicate``,
    ``duplicate_of`` (the kept image), ``distance`` (pHash bits between them), ``inliers`` (null when
    accepted on the hash), ``agreement`` (share of agreeing blocks), ``scale`` (kept-image pixels per
    duplicate pixel) and ``crop_box`` (the duplicate's extent within the kept image, ``[x0, y0, x1, y1]``
    in its pixels), which the report draws (the class declares it in ``pair_view``), and with ``mirror``,
    ``mirrored``; unreadable images with their reason code. Needs OpenCV:
    ``pip install 'dataflow-curate[robust]'``. Features take about 30 KB per image in memory (twice that
    with ``mirror``); every engine runs the verification on one machine (Ray runs the step on the driver).

    No DataFlow-MM operator does this; the dedup parameters it shares with the other dedup filters
    (``max_distance``, ``keep``, ``transitive``) keep their meaning, except that ``max_distance`` bounds the
    pHash *candidates* (each still verified) and ``transitive`` joins a row through a verified member only.

    Parameters:
        max_distance: pHash radius (bits) of the hash candidates; they are verified like the others
        accept_distance: pHash distance (bits) at or below which two images are duplicates without
            verification (identical and resized copies)
        min_inliers: matched keypoints that must agree with the fitted similarity
        min_agreement: share of textured thumbnail blocks whose pixels must correlate once aligned
        min_overlap: share of the smaller image that must lie inside the other
        max_zoom: largest zoom between the two views of the shared region (5: a crop down to a fifth of
            the side)
        max_candidates: candidate pairs each row keeps (its strongest by shared keys); bounds the
            verifications per row
        n_features: ORB keypoints per image (spread over a grid, strongest first)
        transitive: True: a row may join through a verified group member when the kept image alone does
            not verify it (`linked_by` names that member); False: only rows verified against the kept image
        mirror: also match mirror images (left-right flips): phase 1 finds the flipped image's features
            too (about twice its cost), and dropped rows get a `mirrored` column
        keep: survivor of each group: `"best"` (most pixels, then the larger file, then the sharper),
            `"first"` (row order), `"largest"` (most pixels) or a column name (highest value wins)
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_group_key: kept rows get a duplicate-group id in this column and the group's size in
            `<key>_size`; None = no group columns
    """

    description = (
        "Drops near duplicates that survive crops, banners, letterboxes and overlays: candidates verified by "
        "ORB keypoints, a RANSAC similarity and a pixel check."
    )
    description_zh = (
        "去除经裁剪、加字幕条、加黑边、截图或叠加文字/水印的近似重复图像："
        "候选对经 ORB 特征点、RANSAC 相似变换与像素比对验证。"
    )
    search = "verified"
    weight_name = "distance"
    cli_command = "dedup"
    cli_methods = ("robust",)
    pair_view = PairView(box="crop_box", facts=("inliers", "scale", "distance"))

    example = Example.on_example_data(
        "ImageRobustDeduplicateFilter",
        """
        op = ImageRobustDeduplicateFilter(keep="largest")
        op.run(storage.step(), input_image_key="image", output_group_key="dup_group")
        """,
        rejected_show=["image", "reason", "duplicate_of", "distance", "inliers", "scale", "crop_box", "detail"],
        rejected_rows=["images/scene_02_crop.jpg", "images/scene_01_small.jpg", "images/truncated.jpg"],
        note="A crop is verified by its keypoints (inliers, its box in the kept image); a resized copy within "
        "`accept_distance` pHash bits is taken on its hash (no inliers, the whole frame).",
    )

    def __init__(
        self,
        max_distance: int = 10,
        accept_distance: int = 2,
        min_inliers: int = 12,
        min_agreement: float = 0.7,
        min_overlap: float = 0.5,
        max_zoom: float = 5.0,
        max_candidates: int = 10,
        n_features: int = 500,
        transitive: bool = True,
        mirror: bool = False,
        keep: str = "best",
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if not 0 <= int(accept_distance) <= int(max_distance) <= 64:
            raise ValueError(
                f"need 0 <= accept_distance <= max_distance <= 64 (pHash bits), got {accept_distance}, {max_distance}"
            )
        if int(min_inliers) < 3:
            raise ValueError(f"min_inliers must be at least 3 (a similarity needs 2 points), got {min_inliers}")
        for name, value in (("min_agreement", min_agreement), ("min_overlap", min_overlap)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} is a share in [0, 1], got {value}")
        if not float(max_zoom) >= 1.0:
            raise ValueError(f"max_zoom must be at least 1, got {max_zoom}")
        if int(max_candidates) < 1 or int(n_features) < 16:
            raise ValueError(f"max_candidates must be >= 1 and n_features >= 16, got {max_candidates}, {n_features}")
        self.max_distance = int(max_distance)
        self.accept_distance = int(accept_distance)
        self.verify_params = lf.VerifyParams(
            min_inliers=int(min_inliers),
            min_agreement=float(min_agreement),
            min_overlap=float(min_overlap),
            max_zoom=float(max_zoom),
        )
        self.max_candidates = int(max_candidates)
        self.n_features = int(n_features)
        self.transitive = bool(transitive)
        self.mirror = bool(mirror)
        self.keep = check_keep(keep)
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self.stats: dict[str, float] = {}
        self.last_matches = 0

    @classmethod
    def from_cli(cls, args) -> ImageRobustDeduplicateFilter:
        """``dataflow dedup --method robust``: ``--max-distance`` (the pHash candidate radius, default 10),
        ``--keep``, ``--non-transitive`` and ``--num-workers``."""
        options: dict[str, Any] = {"keep": args.keep} if getattr(args, "keep", None) else {}
        if getattr(args, "max_distance", None) is not None:
            options["max_distance"] = args.max_distance
        return cls(
            transitive=not getattr(args, "non_transitive", False),
            num_workers=getattr(args, "num_workers", None),
            **options,
        )

    # ------------------------------------------------------------------ phase 1
    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        """Per row a :class:`RobustKey` (its local features), or why the image could not be read."""
        lf.require_cv2()  # one clear message before any worker starts
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        return map_items(
            robust_key,
            sources,
            num_workers=self.num_workers,
            desc="local features",
            base_dir=base_dir,
            n_features=self.n_features,
            max_pixels=self.max_pixels,
            mirror=self.mirror,
        )

    def stack_keys(self, values: list) -> RobustKeys:
        features = [v.features for v in values]
        flipped = [v.flipped for v in values] if self.mirror else None
        return RobustKeys(
            features,
            thumb_phashes([f.thumb for f in features]),
            np.array([v.file_bytes for v in values], np.int64),
            flipped,
            thumb_phashes([f.thumb for f in flipped]) if flipped is not None else None,
        )

    def compare(self, image: Any, kept: Any, base_dir: str | None = None) -> dict:
        """Whether ``image`` duplicates ``kept`` by this operator's rules, and why: ``duplicate``, ``distance``
        (pHash bits), ``inliers``, ``agreement``, ``scale``, ``crop_box`` (``image`` within ``kept``) and
        ``why`` (the first test failed, "" for a duplicate). For looking at one pair; a run never calls it."""
        lf.require_cv2()
        keys = self.stack_keys(
            [robust_key(s, base_dir, self.n_features, self.max_pixels, self.mirror) for s in (image, kept)]
        )
        saved, self.stats = self.stats, {}
        try:
            found = self.verify(keys, 0, 1)
            why = next((k.split(": ", 1)[1] for k in self.stats if k.startswith("failed: ")), "")
        finally:
            self.stats = saved
        distance = _bits(keys.hashes[0] ^ keys.hashes[1])
        if found is None:
            return {
                "duplicate": False,
                "distance": distance,
                "inliers": None,
                "agreement": None,
                "scale": None,
                "crop_box": None,
                "mirrored": None,
                "why": why,
            }
        box = lf.crop_box(found.transform, keys.features[0].original, keys.features[1].original)
        return {
            "duplicate": True,
            "distance": found.distance,
            "inliers": found.inliers,
            "agreement": found.agreement,
            "scale": lf.similarity_scale(found.transform),
            "crop_box": box,
            "mirrored": found.mirrored,
            "why": "",
        }

    # ------------------------------------------------------------------ phase 2
    def find_pairs(self, keys: RobustKeys) -> Pairs:
        """Candidate pairs: within ``max_distance`` pHash bits, or sharing local keys; weights = shared keys."""
        from dataflow.algorithms.hamming_search import find_near_duplicates

        n = len(keys)
        hashes = keys.hashes if keys.flipped_hashes is None else np.concatenate([keys.hashes, keys.flipped_hashes])
        near = find_near_duplicates(hashes, self.max_distance)[:, :2] % max(n, 1)  # a mirror image is its row
        near = np.sort(near[near[:, 0] != near[:, 1]], axis=1)
        local = [lf.local_hashes(f.descriptors, KEY_BITS, KEY_TABLES) for f in keys.features]
        if keys.flipped is not None:  # a mirror copy shares the keys of its own flipped features
            local = [
                np.union1d(k, lf.local_hashes(f.descriptors, KEY_BITS, KEY_TABLES)) for k, f in zip(local, keys.flipped)
            ]
        shared, votes = shared_key_pairs(
            local, min_shared=MIN_SHARED_KEYS, max_rows_per_key=MAX_ROWS_PER_KEY, max_per_row=self.max_candidates
        )
        pairs, where = np.unique(np.concatenate([shared, near]).reshape(-1, 2), axis=0, return_inverse=True)
        weights = np.zeros(len(pairs))
        np.maximum.at(weights, where.ravel()[: len(shared)], votes.astype(np.float64))
        self.stats = {"rows": len(keys), "hash_pairs": len(near), "local_pairs": len(shared), "candidates": len(pairs)}
        return Pairs(pairs.astype(np.int64), weights)

    # ------------------------------------------------------------------ phase 3
    def verify(self, keys: RobustKeys, row: int, kept: int) -> Evidence | None:
        """Whether ``row`` duplicates ``kept``: by the hash when within ``accept_distance``, else verified;
        with ``mirror``, then its mirror image the same way."""
        found = self._verify(keys.features[row], keys.hashes[row], keys, kept)
        if found is not None or keys.flipped is None:
            return found
        matches = self.last_matches
        found = self._verify(keys.flipped[row], keys.flipped_hashes[row], keys, kept)
        self.last_matches = max(matches, self.last_matches)
        if found is None:
            return None
        # The fit took the flipped image to the kept one: mirror the row first.
        transform = lf.compose(found.transform, flip(keys.features[row].original))
        return found._replace(transform=transform, mirrored=True)

    def _verify(self, a: lf.LocalFeatures, hash_a, keys: RobustKeys, kept: int) -> Evidence | None:
        b = keys.features[kept]
        distance = _bits(hash_a ^ keys.hashes[kept])
        if distance <= self.accept_distance and frames_agree(a, b, self.verify_params):
            self.last_matches = len(a.xy)
            self.stats["accepted_by_hash"] = self.stats.get("accepted_by_hash", 0) + 1
            return Evidence(distance, None, None, lf.frame_transform(a.original, b.original), -1)
        self.stats["verifications"] = self.stats.get("verifications", 0) + 1
        found = lf.verify_pair(a, b, self.verify_params)
        self.last_matches = found.matches
        if not found.duplicate:
            failed = "failed: " + found.why
            self.stats[failed] = self.stats.get(failed, 0) + 1
            return None
        return Evidence(distance, found.inliers, found.agreement, found.transform, -1)

    def check(self, keys: RobustKeys, evidence: dict, row: int, kept: int, via: int) -> Evidence | None:
        """``row`` against the kept row; failing that (transitive), against the member ``via`` that reached
        it, with the transform composed onto the kept row and its overlap checked again."""
        found = self.verify(keys, row, kept)
        # A chain is worth a second verification only when the first found the pair related at all.
        related = self.last_matches >= self.verify_params.min_inliers
        if found is None and self.transitive and via != kept and related:
            link = self.verify(keys, row, via)
            if link is not None:
                placed = lf.compose(evidence[via].transform, link.transform)
                size_row, size_kept = keys.features[row].original, keys.features[kept].original
                if lf.overlap_fraction(placed, size_row, size_kept) >= self.verify_params.min_overlap:
                    mirrored = link.mirrored != evidence[via].mirrored  # two flips make none
                    own = keys.flipped_hashes if mirrored else keys.hashes
                    distance = _bits(own[row] ^ keys.hashes[kept])
                    found = link._replace(distance=distance, transform=placed, linked=via, mirrored=mirrored)
        if found is not None:
            evidence[row] = found
        return found

    def group_verified(self, keys: RobustKeys, found: Pairs, values: np.ndarray) -> tuple[DuplicateGroups, list]:
        """Groups grown around representatives (``keep`` order), every member verified; and the evidence."""
        n = len(keys)
        priority = keep_priority(self.keep, n, sizes=values, columns={self.keep: values})
        evidence: dict[int, Evidence] = {}
        grown = grow_groups(n, found.pairs, priority, lambda row, kept, via: self.check(keys, evidence, row, kept, via))
        keeper = grown.keeper
        rows = np.arange(n)
        dropped = keeper != rows
        weight = np.full(n, np.nan)
        linked = np.full(n, -1, dtype=np.int64)
        for row, ev in evidence.items():
            weight[row] = ev.distance
            linked[row] = ev.linked
            box = lf.crop_box(ev.transform, keys.features[row].original, keys.features[keeper[row]].original)
            evidence[row] = ev._replace(crop_box=box)
        self.stats.update(checks=grown.checks, duplicates=int(dropped.sum()), chained=int((linked >= 0).sum()))
        groups = DuplicateGroups(
            keep=~dropped,
            duplicate_of=np.where(dropped, keeper, -1),
            weight=weight,
            direct=dropped & (linked < 0),
            group_id=keeper,
            group_size=np.bincount(keeper, minlength=n)[keeper].astype(np.int64),
            linked=linked,
        )
        return groups, [evidence.get(r) for r in range(n)]

    def split(self, good: pd.DataFrame, decided: Decisions, keys: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The base's kept and dropped rows, the dropped ones with the evidence of their verification."""
        kept, dups = super().split(good, decided, keys)
        given = getattr(decided, "evidence", None) or [None] * len(good)
        evidence = [e for e, keep in zip(given, np.asarray(decided.keep, dtype=bool)) if not keep]
        dups[self.weight_name] = pd.array([e.distance if e else None for e in evidence], dtype="Int64")
        dups["inliers"] = pd.array([e.inliers if e else None for e in evidence], dtype="Int64")
        dups["agreement"] = [np.nan if e is None or e.agreement is None else round(e.agreement, 4) for e in evidence]
        dups["scale"] = [np.nan if e is None else round(lf.similarity_scale(e.transform), 4) for e in evidence]
        dups["crop_box"] = pd.Series([e.crop_box if e else None for e in evidence], index=dups.index, dtype=object)
        if self.mirror:
            dups["mirrored"] = [bool(e.mirrored) if e else False for e in evidence]
        return kept, dups

    # ------------------------------------------------------------------ the local engine
    def deduplicate(self, storage, **keys) -> list[str]:
        """Phase 1 in worker processes, candidate pairs, verified groups, then one write of kept and rejected."""
        df = storage.read("dataframe")
        clock = time.perf_counter()
        results = self.row_keys(df, storage.image_base, keys)
        readable, unreadable = rejected_unreadable(df, results)
        good = df[readable.to_numpy()]
        values = self.stack_keys([r.value for r in results if r.error is None])
        seconds = {"features_s": time.perf_counter() - clock}
        clock = time.perf_counter()
        found = self.find_pairs(values)
        seconds["candidates_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        touched = found.touched(len(good))
        ranks = np.full(len(good), np.nan)
        ranks[touched] = self.keep_values(with_facts(good, values)[touched], storage.image_base, keys, self.num_workers)
        groups, evidence = self.group_verified(values, found, ranks)
        seconds["verify_s"] = time.perf_counter() - clock
        self.stats.update({k: round(v, 3) for k, v in seconds.items()})
        image_key = self.image_key(keys, df.columns)
        labels = good.index.to_numpy()
        images = good[image_key].to_numpy(dtype=object) if image_key else labels.astype(object)
        verified = np.flatnonzero(~groups.keep)
        self.candidates = Candidates(
            images,
            labels,
            Pairs(
                np.column_stack([verified, groups.group_id[verified]]).reshape(-1, 2),
                np.array([np.nan if evidence[r].inliers is None else evidence[r].inliers for r in verified], float),
            ),
            "larger",
        )
        decided = VerifiedDecisions.from_groups(groups, labels, images, keys=values)
        decided = dataclasses.replace(decided, evidence=evidence)
        kept, dups = self.split(good, decided, keys)
        note = getattr(storage, "note", None)
        if callable(note):
            note("robust_dedup", dict(self.stats))
        logger.info("robust dedup: %s", ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        storage.write(kept, rejected=concat_rejected(unreadable, dups))
        return self.output_columns(keys)

    def run(self, storage, input_image_key: str = "image", output_group_key: str = "dup_group") -> list[str]:
        return self.deduplicate(storage, input_image_key=input_image_key, output_group_key=output_group_key)


def _bits(x) -> int:
    return int(np.bitwise_count(np.uint64(x))) if hasattr(np, "bitwise_count") else bin(int(x)).count("1")


def with_facts(good: pd.DataFrame, keys: RobustKeys) -> pd.DataFrame:
    """``good`` with the size facts phase 1 already read (``width``, ``height``, ``file_bytes``) where it lacks
    those columns, so the keep policy ranks by them without reading every header again."""
    facts = {
        "width": [f.original[0] for f in keys.features],
        "height": [f.original[1] for f in keys.features],
        "file_bytes": keys.file_bytes,
    }
    missing = {k: v for k, v in facts.items() if k not in good.columns}
    return good.assign(**missing) if missing and len(good) == len(keys) else good
