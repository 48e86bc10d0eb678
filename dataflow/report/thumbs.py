"""Small JPEG thumbnails for the report, decoded once per image and capped in number.

Sections ask for thumbnails while they render; each ask returns a token placed in the HTML. Once every
section has asked, the accepted images are decoded in parallel (JPEG draft decode, so a 24 MP photo costs
a 1/8-scale decode) and the tokens are replaced with elements that use one CSS class per image: an image
shown in several places is embedded once.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from dataflow.media import ImageLoadError, load_image, resolve_path

_TOKEN = re.compile("\x00T(\\d+)\x00")


@dataclass
class _Ref:
    image: int | None  # index into the accepted images, None if over the cap
    label: str  # the path as stored, shown on hover
    placeholder: str | None  # text shown instead of a picture (unreadable reason), if known up front


@dataclass
class _Image:
    source: Any
    base: str | None
    data: bytes | None = None
    error: str | None = None


class ThumbnailStore:
    """Collects thumbnail requests up to ``max_thumbnails`` distinct images, then embeds them."""

    def __init__(self, max_thumbnails: int = 400, size: int = 128, quality: int = 72, num_workers: int | None = None):
        self.max_thumbnails = max(0, int(max_thumbnails))
        self.size = int(size)
        self.quality = int(quality)
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        self._refs: list[_Ref] = []
        self._images: list[_Image] = []
        self._index: dict[str, int] = {}
        self.ceiling = self.max_thumbnails
        self.omitted = 0

    @property
    def used(self) -> int:
        return len(self._images)

    def has_room(self) -> bool:
        return self.used < min(self.ceiling, self.max_thumbnails)

    def ref(self, source: Any, base: str | None, label: str, placeholder: str | None = None) -> str:
        """A token standing for a thumbnail of ``source``; a placeholder if it is unreadable or over the cap."""
        image = None
        if placeholder is None:
            key = _source_key(source, base)
            image = self._index.get(key) if key is not None else None
            if image is None and key is not None and self.has_room():
                image = self._index[key] = len(self._images)
                self._images.append(_Image(source, base))
            if image is None:
                self.omitted += 1
        self._refs.append(_Ref(image, label, placeholder))
        return f"\x00T{len(self._refs) - 1}\x00"

    def materialize(self) -> None:
        """Decode every accepted image (in threads; Pillow releases the GIL while decoding)."""
        todo = [im for im in self._images if im.data is None and im.error is None]
        if not todo:
            return
        with ThreadPoolExecutor(self.num_workers) as pool:
            for im, (data, error) in zip(todo, pool.map(self._thumb, todo)):
                im.data, im.error = data, error

    def _thumb(self, im: _Image) -> tuple[bytes | None, str | None]:
        try:
            img = load_image(im.source, base_dir=im.base, draft_size=self.size)
            img.thumbnail((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=self.quality, optimize=True)
            return buf.getvalue(), None
        except ImageLoadError as exc:
            return None, exc.reason
        except Exception:  # a report never fails on one bad image
            return None, "error"

    def css(self) -> str:
        """One CSS rule per embedded image."""
        rules = []
        for i, im in enumerate(self._images):
            if im.data is not None:
                b64 = base64.b64encode(im.data).decode("ascii")
                rules.append(f'.t{i}{{background-image:url("data:image/jpeg;base64,{b64}")}}')
        return "\n".join(rules)

    def embedded(self) -> int:
        return sum(im.data is not None for im in self._images)

    def fill(self, text: str) -> str:
        """Replace the tokens in ``text`` with thumbnail elements."""
        return _TOKEN.sub(lambda m: self._element(self._refs[int(m.group(1))]), text)

    def _element(self, ref: _Ref) -> str:
        title = html.escape(ref.label, quote=True)
        if ref.placeholder is not None:
            return f'<span class="th ph bad" title="{title}">{html.escape(ref.placeholder)}</span>'
        if ref.image is None:
            return f'<span class="th ph" title="{title}">not embedded</span>'
        im = self._images[ref.image]
        if im.data is None:
            return f'<span class="th ph bad" title="{title}">{html.escape(im.error or "error")}</span>'
        return f'<span class="th t{ref.image}" role="img" aria-label="{title}" title="{title}"></span>'


def _source_key(source: Any, base: str | None) -> str | None:
    if isinstance(source, dict):
        data = source.get("bytes")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            return "b:" + hashlib.blake2b(bytes(data), digest_size=16).hexdigest()
        source = source.get("path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "b:" + hashlib.blake2b(bytes(source), digest_size=16).hexdigest() if len(source) else None
    if isinstance(source, (str, os.PathLike)) and os.fspath(source):
        return "p:" + str(resolve_path(source, base))
    return None
