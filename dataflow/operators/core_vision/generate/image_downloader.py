"""ImageDownloader: fetch the image of each row's URL into the cache folder, in the spirit of img2dataset."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dataflow.core.docs import Example
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import get_logger, progress
from dataflow.media import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, open_bytes
from dataflow.media.http_fetch import USER_AGENT, FetchError, FetchOptions, FetchResult, check_url, fetch_all
from dataflow.media.loader import TAIL_CHECKED_FORMATS, apply_exif_orientation, to_mode, truncation_detail
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns

logger = get_logger("dataflow.download")

BYTES_COLUMN = "download_bytes"
STATUS_COLUMN = "http_status"
# File extension of each format the loader decodes (the format found in the bytes, never the URL's suffix).
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "BMP": "bmp",
    "DIB": "bmp",
    "TIFF": "tif",
    "WEBP": "webp",
    "HEIF": "heic",
    "AVIF": "avif",
    "PPM": "ppm",
    "ICO": "ico",
    "TGA": "tga",
}
REASON_MEANINGS = {
    "http_404": "the server answered 404 Not Found (not retried)",
    "http_4xx": "any other 4xx (the detail has the code); 408 and 429 only after their retries",
    "http_5xx": "a 5xx answer, after its retries",
    "http_3xx": "a redirect without a Location header, or another 3xx that is not an answer",
    "timeout": "no connection or no answer within `timeout`, after the retries",
    "too_large": "a Content-Length or a body over `max_bytes`, or more pixels than `max_pixels`",
    "not_an_image": "the body is no image the loader reads: HTML, empty, cut off (the detail gives the "
    "loader's code and the Content-Type)",
    "dns": "the host name does not resolve (or the resolver did not answer within `timeout`)",
    "connection": "refused, reset or closed early, after the retries; or a TLS certificate refused",
    "invalid_url": "null, empty, malformed, not http:// or https:// (`file://` is never read), or a "
    "redirect to such a URL",
    "redirect_loop": "a redirect chain that comes back to a URL it passed, or longer than `max_redirects`",
}
STALE_TEMP_SECONDS = 3600  # a temp file this old is left from a killed run (a live write takes seconds)


@OPERATOR_REGISTRY.register()
class ImageDownloader(OperatorABC):
    """Downloads the image at each row's URL into the cache folder and writes its absolute path to the
    image column, so every later step reads local files; what cannot be fetched is rejected with a reason.

    Files go to ``<cache_path>/downloads/<2 hex>/<sha1 of the URL>.<ext>`` (the extension from the bytes, not
    the URL), each written atomically. A URL whose file is already there is not fetched again: a rerun, or a
    run after a killed one, fetches only the missing files, and later steps never touch the network. The
    original bytes are kept unless ``resize_max_side`` is set. Repeated URLs are fetched once.

    Fetching uses the standard library only (``http.client``): ``max_workers`` threads, at most
    ``max_per_host`` requests at a time to one host (a worker is only given URLs whose host has a free
    slot), keep-alive connections, redirects followed up to ``max_redirects``, and retries with exponential
    backoff and jitter on timeouts, connection errors, 408, 429 and 5xx; a ``Retry-After`` is honoured up
    to ``max_retry_wait`` and pauses the whole host. Only http:// and https:// URLs are fetched, never
    ``file://``. Bodies are checked to be images (header and end marker, as ``dataflow.media`` reads them).

    Every row is kept, with its file, or rejected with a ``reason`` (one of ``http_404``, ``http_4xx``,
    ``http_5xx``, ``http_3xx``, ``timeout``, ``too_large``, ``not_an_image``, ``dns``, ``connection``,
    ``invalid_url``, ``redirect_loop``: see "Rejected reasons" below), a ``detail`` in words and an
    ``http_status`` (the last status seen; null when no response came).

    Runs over the whole table (``execution = "table"``): the per-host limit holds only when one scheduler
    sees every URL (Ray tasks would each allow ``max_per_host``), and the files belong in the run's cache.

    Parameters:
        max_workers: requests in flight at once (threads)
        max_per_host: requests in flight at once to one host (``host:port``); be polite to small servers
        timeout: seconds to connect, and to wait for each read of the answer; one attempt also ends after
            10 x ``timeout`` in all (a server dripping bytes). DNS lookups get the same timeout
        retries: extra attempts after a timeout, a connection error, 408, 429 or 5xx (so at most
            ``retries + 1`` requests per URL, redirects aside)
        backoff: seconds before the first retry (then doubled each time), with jitter: a wait is between
            half and all of it
        max_retry_wait: the longest wait before a retry, in seconds; a server's Retry-After is honoured up
            to this
        max_redirects: redirects followed per URL; more is a ``redirect_loop``
        max_bytes: largest body kept, in bytes (a larger Content-Length is refused before the body is read;
            without one, reading stops past the limit); None = no limit
        resize_max_side: None (default) keeps the original bytes; a number of pixels re-encodes images whose
            longer side is larger to fit in that square (upright, JPEG stays JPEG at quality 95, the other
            formats become PNG; ICC profile kept, other metadata dropped) and stores them under
            ``downloads/max<N>/``. Images already small enough keep their original bytes
        max_pixels: decompression-bomb guard applied to each body: more pixels is rejected as ``too_large``;
            None = no limit
        user_agent: the User-Agent header; None = ``dataflow/<version> (image dataset curation; ...)``
        download_dir: folder for the files; None = ``<cache_path>/downloads`` of the storage (pass one to
            share downloads between pipelines, or where the storage has no cache folder)
        input_url_key: column holding the image URLs
        output_image_key: column the absolute path of each downloaded file is written to (it may be the URL
            column itself; kept rows also get ``download_bytes``, the size of the file)
    """

    description = (
        "Downloads each row's image URL into the cache folder (threads, per-host limit, retries, resumable) "
        "and writes the file's path; failures are rejected with a reason (http_404, timeout, not_an_image...)."
    )
    description_zh = (
        "把每行的图像 URL 下载到缓存目录（多线程、按主机限流、重试、可断点续传）并写入文件路径；"
        "失败的行记入 rejected（http_404、timeout、not_an_image 等）。"
    )
    execution = "table"
    example = Example(
        """
        from dataflow.operators.core_vision import ImageDownloader
        from dataflow.utils.storage import FileStorage

        # urls.csv: a `url` column (and any others: captions, licences), one image URL per row
        storage = FileStorage("urls.csv", cache_path="./cache", file_name_prefix="dl", cache_type="jsonl")
        op = ImageDownloader(max_workers=16, max_per_host=4, timeout=10, retries=2)
        op.run(storage.step(), input_url_key="url", output_image_key="image")
        print(storage.manifest(1)["rejected_reasons"])  # e.g. {'http_404': 3, 'timeout': 1}
        # then any image operator on storage.step(): it reads the downloaded files
        """,
        not_run="it fetches URLs, and the docs are built without network access",
    )

    def __init__(
        self,
        max_workers: int = 16,
        max_per_host: int = 4,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 1.0,
        max_retry_wait: float = 30.0,
        max_redirects: int = 5,
        max_bytes: int | None = 20_000_000,
        resize_max_side: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        user_agent: str | None = None,
        download_dir: str | os.PathLike | None = None,
    ):
        # Built here so that a bad value fails when the pipeline is built, not after its first steps ran.
        self._options = FetchOptions(
            max_workers=max_workers,
            max_per_host=max_per_host,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_retry_wait=max_retry_wait,
            max_redirects=max_redirects,
            max_bytes=max_bytes,
            user_agent=user_agent or USER_AGENT,
        )
        if resize_max_side is not None and (not isinstance(resize_max_side, int) or resize_max_side < 1):
            raise ValueError(f"resize_max_side must be a number of pixels >= 1 or None, got {resize_max_side!r}")
        self.max_workers = max_workers
        self.max_per_host = max_per_host
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self.max_redirects = max_redirects
        self.max_bytes = max_bytes
        self.resize_max_side = resize_max_side
        self.max_pixels = max_pixels
        self.user_agent = user_agent
        self.download_dir = download_dir

    @classmethod
    def doc_sections(cls) -> str:
        """Markdown the docs page ends with: the rejected reasons and the columns of rejected rows."""
        lines = ["## Rejected reasons", "", "| reason | when |", "|---|---|"]
        lines += [f"| `{code}` | {what} |" for code, what in REASON_MEANINGS.items()]
        lines += [
            "",
            "Rejected rows (`<prefix>_step<N>.rejected.jsonl`) keep their input columns and add `reason`, "
            "`detail` and `http_status`.",
        ]
        return "\n".join(lines)

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_image_key") or "image", BYTES_COLUMN]

    def folder_for(self, storage) -> Path:
        """The absolute folder this call's files go to."""
        if self.download_dir is not None:
            root = Path(self.download_dir)
        elif getattr(storage, "cache_path", None):
            root = Path(storage.cache_path) / "downloads"
        else:
            raise ValueError(
                f"{type(self).__name__}: this storage ({type(storage).__name__}) has no cache_path to download "
                "into; pass download_dir= (a folder every worker can read)"
            )
        if self.resize_max_side is not None:
            root = root / f"max{self.resize_max_side}"  # resized copies never pass for originals, nor back
        return Path(os.path.abspath(root))

    def run(self, storage, input_url_key: str = "url", output_image_key: str = "image") -> list[str]:
        name = type(self).__name__
        df = storage.read("dataframe")
        if input_url_key not in df.columns:
            raise KeyError(
                f"{name}: input_url_key={input_url_key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
            )
        folder = DownloadFolder(self.folder_for(storage))
        checked = [check_url(v) for v in df[input_url_key].tolist()]
        # One fetch per distinct URL; rows repeating a URL share its file.
        rows_per_url = Counter(url for url, _ in checked if url is not None)
        outcome: dict[str, FetchResult] = {}
        for url in rows_per_url:
            found = folder.find(url_digest(url))
            if found is not None:
                outcome[url] = FetchResult(value=found, url=url)
        wanted = [url for url in rows_per_url if url not in outcome]
        digests = [url_digest(url) for url in wanted]
        reused = len(rows_per_url) - len(wanted)

        def store(index: int, body: bytes, content_type: str | None) -> tuple[str, int]:
            return self._store(folder, digests[index], body, content_type)

        bar = progress(total=len(df), desc=name, unit="img")
        bar.update(len(df) - sum(rows_per_url[u] for u in wanted))  # reused files and invalid URLs: done
        started = time.perf_counter()
        try:
            results = fetch_all(
                wanted, store, self._options, on_result=lambda i, _: bar.update(rows_per_url[wanted[i]])
            )
        finally:
            bar.close()
        outcome.update(zip(wanted, results))

        kept, rejected = self._split(df, checked, outcome, output_image_key)
        fetched = sum(r.ok for r in results)
        logger.info(
            "%s: %d URL(s): %d fetched in %.1fs, %d already in %s, %d row(s) rejected%s",
            name,
            len(rows_per_url),
            fetched,
            time.perf_counter() - started,
            reused,
            folder.root,
            len(rejected),
            f" ({dict(Counter(rejected['reason']).most_common())})" if len(rejected) else "",
        )
        storage.write(kept, rejected=rejected)
        return self.output_columns({"output_image_key": output_image_key})

    def _split(
        self, df: pd.DataFrame, checked: list, outcome: dict[str, FetchResult], output_image_key: str
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        n = len(df)
        ok = np.zeros(n, dtype=bool)
        paths, sizes = [None] * n, np.zeros(n, dtype=np.int64)
        reasons, details, statuses = [None] * n, [None] * n, [None] * n
        for i, (url, why) in enumerate(checked):
            result = outcome[url] if url is not None else FetchResult(reason="invalid_url", detail=why)
            if result.ok:
                ok[i] = True
                paths[i], sizes[i] = result.value
            else:
                reasons[i], details[i], statuses[i] = result.reason, result.detail, result.status
        kept = df[ok].copy()
        kept[output_image_key] = pd.Series([p for p, k in zip(paths, ok) if k], index=kept.index, dtype=object)
        kept[BYTES_COLUMN] = sizes[ok]
        bad = ~ok
        rejected = keep_user_columns(df[bad].copy(), (*PROVENANCE_COLUMNS, STATUS_COLUMN))
        rejected["reason"] = [r for r, b in zip(reasons, bad) if b]
        rejected["detail"] = [d for d, b in zip(details, bad) if b]
        rejected[STATUS_COLUMN] = pd.Series([s for s, b in zip(statuses, bad) if b], index=rejected.index, dtype=object)
        return kept, rejected

    def _store(self, folder: DownloadFolder, digest: str, body: bytes, content_type: str | None) -> tuple[str, int]:
        """Check that ``body`` is an image, resize it if asked, write it; runs in the fetching thread."""
        try:
            # The header and the end marker, as image_info checks them, without its EXIF and frame walk
            # (half the cost per image); the longer side is the same whichever way the EXIF turns it.
            if not body:
                raise ImageLoadError("empty", "zero-length body")
            img = open_bytes(body, max_pixels=self.max_pixels)
            fmt, size, mode = img.format, img.size, img.mode
            cut = truncation_detail(body, fmt, size) if fmt in TAIL_CHECKED_FORMATS else None
            if cut:
                raise ImageLoadError("truncated", cut)
            side = self.resize_max_side
            if side is not None and max(size) > side:
                body, fmt = resized(body, fmt, mode, side, self.max_pixels)
        except ImageLoadError as exc:
            what = f"{exc.detail or exc.reason} ({len(body)} bytes, Content-Type {content_type or 'none'})"
            what = what.replace("<bytes>", "the body")
            if exc.reason == "too_large":
                raise FetchError("too_large", what) from None
            raise FetchError("not_an_image", f"{exc.reason}: {what}") from None
        except Exception as exc:  # a decoder or encoder failing on this one body: the row's problem, not the run's
            raise FetchError("not_an_image", f"cannot re-encode the body: {type(exc).__name__}: {exc}") from None
        return folder.write(digest, body, EXTENSIONS.get(fmt, fmt.lower()))


def url_digest(url: str) -> str:
    """The file name stem of a URL's download: the SHA-1 of the URL (as fetched: spaces percent-encoded)."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def resized(body: bytes, fmt: str, mode: str, side: int, max_pixels: int | None) -> tuple[bytes, str]:
    """``body`` re-encoded upright to fit in ``side`` x ``side``: JPEG stays JPEG (quality 95), the others
    become PNG (alpha kept). Raises ``ImageLoadError`` when it cannot be decoded."""
    head = open_bytes(body, max_pixels=max_pixels)
    icc = head.info.get("icc_profile")  # colours stay right; EXIF and the rest are dropped
    if fmt in ("JPEG", "MPO"):
        # draft decoding: a 4000 px JPEG decodes at 1/2 .. 1/8 scale straight to about the size wanted
        img = load_image(body, draft_size=side, max_pixels=max_pixels, mode="L" if mode == "L" else "RGB")
        out_fmt, options = "JPEG", {"quality": 95}
    else:
        img = head
        try:
            img.seek(0)
            img.load()
        except Exception as exc:  # decoders raise many types on malformed data
            raise ImageLoadError("truncated", f"cannot decode the body: {exc}") from None
        img = apply_exif_orientation(img)
        if img.mode in ("P", "PA", "RGBA") or "transparency" in img.info:
            img = img.convert("RGBA")  # transparency kept
        elif img.mode not in ("RGB", "L", "LA"):
            img = to_mode(img, "RGB")  # CMYK, 16-bit and float images as 8-bit RGB
        out_fmt, options = "PNG", {}
    if icc:
        options["icc_profile"] = icc
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, out_fmt, **options)
    return buffer.getvalue(), out_fmt


class DownloadFolder:
    """``<root>/<2 hex>/<digest>.<ext>`` files: which digests are there, and atomic writes of new ones."""

    def __init__(self, root: Path):
        self.root = root
        self._listings: dict[str, dict[str, str]] = {}
        self._made: set[str] = set()
        self._lock = threading.Lock()

    def _listing(self, shard: str) -> dict[str, str]:
        """digest -> file name in one shard folder, read once (a rerun over 1M URLs lists 256 folders)."""
        if shard not in self._listings:
            names: dict[str, str] = {}
            folder = self.root / shard
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                entries = []
            now = time.time()
            for entry in entries:
                if entry.name.startswith("."):
                    self._remove_if_stale(entry, now)
                    continue
                names.setdefault(entry.name.split(".", 1)[0], entry.name)
            self._listings[shard] = names
        return self._listings[shard]

    @staticmethod
    def _remove_if_stale(entry: os.DirEntry, now: float) -> None:
        try:
            if entry.name.endswith(".tmp") and now - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                os.unlink(entry.path)
        except OSError:
            pass

    def find(self, digest: str) -> tuple[str, int] | None:
        """``(path, size)`` of the file already downloaded for ``digest``, or None.

        A file that is empty or starts with zero bytes (what a power cut can leave of an unsynced write) is
        removed and counts as missing, so it is fetched again.
        """
        name = self._listing(digest[:2]).get(digest)
        if name is None:
            return None
        path = self.root / digest[:2] / name
        try:
            with open(path, "rb") as fh:
                head = fh.read(16)
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            return None
        if not head or not head.strip(b"\0"):
            path.unlink(missing_ok=True)
            return None
        return str(path), size

    def write(self, digest: str, data: bytes, ext: str) -> tuple[str, int]:
        """Write atomically (a temp file beside it, then ``os.replace``): a killed run leaves no half file.

        Not fsynced (that costs ~3 ms a file); :meth:`find` catches what a power cut leaves instead."""
        folder = os.path.join(self.root, digest[:2])  # strings, not Paths: this runs once per image
        if digest[:2] not in self._made:
            os.makedirs(folder, exist_ok=True)
            with self._lock:
                self._made.add(digest[:2])
        target = os.path.join(folder, f"{digest}.{ext}")
        tmp = os.path.join(folder, f".{digest}.{secrets.token_hex(4)}.tmp")
        try:
            # O_EXCL with mode 0o666: the umask applies, as for any file the user writes.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return target, len(data)
