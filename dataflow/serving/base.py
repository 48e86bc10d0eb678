"""What a generate operator asks of a vision-language model, whichever program runs the model.

:class:`LLMServingABC` / :class:`VLMServingABC` keep DataFlow-MM's names and methods
(``generate_from_input``, ``generate_from_input_messages``, ``cleanup``), so their operators and scripts
call a serving from here as they call theirs. Underneath, every serving answers
:meth:`VLMServingABC.generate_results`: one :class:`VLMResult` per request, the text or why there is none.
DataFlow-MM's servings return ``"Error: ..."`` strings in place of failed answers, which a later step cannot
tell from a caption; here a failed request is a null text with a reason code and a detail, and the
DataFlow-style methods return None for it.

A problem no request can get past (the server is not there, the key is refused, the model is not on disk)
is a :class:`ServingError` that stops the run with one clear message, instead of a reason on every row.

Images are read by :func:`dataflow.media.load_image` (any source a dataset column holds: paths, bytes,
``{"bytes", "path"}`` dicts, PIL images), upright (EXIF orientation applied), decoded once and, where a
serving is given ``max_side``, shrunk to fit in ``max_side`` x ``max_side`` before they are sent.

A serving's attributes are its configuration only: the operator that holds one records it in its step
manifest and fingerprint (by content), so what a serving builds while it runs (connections, a loaded model)
lives in a :class:`Runtime` slot that fingerprints, pickles and prints as nothing.
"""

from __future__ import annotations

import base64
import io
import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dataflow.log import get_logger

logger = get_logger("dataflow.serving")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Why a request has no text (VLMResult.reason); an unreadable image has the loader's code instead
# (dataflow.media.errors.REASONS: missing, empty, truncated, not_an_image, too_large, unsupported, error).
REQUEST_REASONS = {
    "timeout": "no answer within `timeout` seconds, after the retries",
    "connection": "the connection was refused, reset or closed early, after the retries",
    "http_429": "the server kept answering 429 Too Many Requests, after the retries",
    "http_5xx": "the server kept answering a 5xx (the detail has the status and its message), after the retries",
    "http_4xx": "the server refused this request (400: too long, an image it cannot read...; not retried)",
    "bad_response": "an answer that is not chat-completions JSON with a message",
    "empty_response": "the model answered with no text",
    "generation_failed": "the local model raised on this request (the detail has the error)",
}


class ServingError(RuntimeError):
    """A problem no request can get past: the run stops with this message instead of failing every row."""


class ServingConnectionError(ServingError):
    """The server cannot be reached at all (refused, unknown host, no answer)."""


class ServingAuthError(ServingError):
    """The server refused the API key (HTTP 401 / 403)."""


@dataclass
class VLMResult:
    """One request's outcome: ``text``, or ``reason`` (a code) and ``detail`` (words) saying why there is none.

    ``image_failed`` tells that ``reason`` is the image loader's code (the request was never sent);
    ``status`` is the last HTTP status seen (None without one), ``requests`` the attempts sent.
    """

    text: str | None = None
    reason: str | None = None
    detail: str | None = None
    image_failed: bool = False
    status: int | None = None
    requests: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


class Runtime:
    """What a serving builds while it runs (connections, a loaded model): never part of its configuration.

    Slots and a fixed ``repr``: the fingerprint of an object without ``__dict__`` is its ``repr``, so a
    serving fingerprints the same before and after it ran, and a manifest never prints a model.
    """

    __slots__ = ("state",)

    def __init__(self):
        self.state: dict[str, Any] = {}

    def __repr__(self) -> str:
        return "<runtime>"

    def __reduce__(self):
        return (Runtime, ())  # a pickled serving (a Ray actor's copy) starts without connections or a model


class LLMServingABC(ABC):
    """DataFlow's serving base: ``generate_from_input(user_inputs, system_prompt) -> list[str]``."""

    @abstractmethod
    def generate_from_input(self, user_inputs: list[str], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list:
        """One answer per input."""

    def cleanup(self) -> None:
        """Free what the serving holds (connections, a model and its GPU memory); it can run again after."""
        runtime = self.__dict__.get("_runtime")
        if isinstance(runtime, Runtime):
            runtime.state.clear()

    def load_model(self, model_name_or_path: str, **kwargs: Any):
        raise NotImplementedError(f"{type(self).__name__} loads its model itself, on first use")

    def missing_models(self) -> list[str]:
        """Why a model this serving names is not on local disk (one line each), without loading it."""
        return []


class VLMServingABC(LLMServingABC):
    """A vision-language model behind one method, :meth:`generate_results`; the DataFlow-MM methods on top.

    A subclass writes :meth:`generate_results`. Its configuration goes in plain attributes (the operator's
    manifest shows them through ``repr``); what it builds while running goes in ``self._runtime.state``.
    """

    def __init__(self):
        self._runtime = Runtime()

    @property
    def runtime(self) -> dict[str, Any]:
        if "_runtime" not in self.__dict__:  # a subclass whose __init__ did not call ours
            self.__dict__["_runtime"] = Runtime()
        return self._runtime.state

    @abstractmethod
    def generate_results(
        self,
        prompts: Sequence[Any],
        images: Sequence[Any] | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        base_dir: str | os.PathLike | None = None,
        desc: str = "",
        on_result: Callable[[int, VLMResult], None] | None = None,
    ) -> list[VLMResult]:
        """One result per prompt, in order.

        ``prompts``: per request, the user's text, or a conversation (a list of ``{"role", "content"}`` or
        DataFlow's ``{"from", "value"}`` turns) whose last user turn gets the images. ``images``: per
        request, one image source or a list of them (None or ``[]``: text only); relative paths are taken
        against ``base_dir``. An unreadable image fails its request with the loader's reason.
        ``on_result(i, result)`` is called as each request finishes (in completion order, one call at a
        time), so a caller can keep finished answers before the whole list is done.
        """

    # -- DataFlow-MM's methods
    def generate_from_input(
        self,
        user_inputs: list[str],
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        image_inputs: list | None = None,
        video_inputs: list | None = None,
        audio_inputs: list | None = None,
    ) -> list[str | None]:
        """DataFlow-MM's call: one answer per input, None where a request failed (the reasons are logged)."""
        _no_media(video_inputs, audio_inputs)
        return texts_of(self.generate_results(list(user_inputs), image_inputs, system_prompt), type(self).__name__)

    def generate_from_input_messages(
        self,
        conversations: list[list[dict]],
        image_list: list | None = None,
        video_list: list | None = None,
        audio_list: list | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> list[str | None]:
        """DataFlow-MM's conversation call (``{"role", "content"}`` or ``{"from", "value"}`` turns)."""
        _no_media(video_list, audio_list)
        return texts_of(self.generate_results(list(conversations), image_list, system_prompt), type(self).__name__)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({shown})"


def _no_media(*lists) -> None:
    if any(x is not None and any(v is not None for v in x) for x in lists):
        raise NotImplementedError("video and audio inputs are not supported: this serving sends images and text")


def texts_of(results: list[VLMResult], name: str) -> list[str | None]:
    """The texts of ``results`` (None where failed), logging how many failed and why."""
    failed = Counter(r.reason for r in results if not r.ok)
    if failed:
        first = next(r for r in results if not r.ok)
        logger.warning(
            "%s: %d of %d request(s) failed (%s); first: %s",
            name,
            sum(failed.values()),
            len(results),
            ", ".join(f"{k}: {v}" for k, v in failed.most_common()),
            first.detail,
        )
    return [r.text if r.ok else None for r in results]


# ------------------------------------------------------------------------------------------ requests
def conversation_of(prompt: Any) -> list[dict]:
    """A request as ``[{"role", "content"}, ...]``: a string is one user turn; DataFlow's ``{"from": "human",
    "value"}`` turns become user turns, ``gpt`` / ``assistant`` turns assistant ones."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if prompt is None or (isinstance(prompt, float) and math.isnan(prompt)):
        return [{"role": "user", "content": ""}]
    if isinstance(prompt, dict):
        prompt = [prompt]
    turns = []
    for turn in list(prompt):
        if not isinstance(turn, dict):
            raise TypeError(f"a conversation turn must be a dict, got {type(turn).__name__}")
        if "role" in turn:
            role, content = str(turn["role"]), turn.get("content", "")
        else:
            role = "user" if turn.get("from", "human") in ("human", "user") else "assistant"
            content = turn.get("value", "")
        if isinstance(content, str):
            content = content.replace("<image>", "").replace("<video>", "")  # DataFlow-MM's local-mode markers
        turns.append({"role": role, "content": content})
    return turns or [{"role": "user", "content": ""}]


def images_of(value: Any) -> list:
    """One request's image sources as a list: None (or NaN) is none, a list or tuple is itself, else one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if type(value).__name__ == "ndarray":  # a list column read back from Parquet
        return list(value.tolist())
    return [value]


def per_request_images(images: Sequence[Any] | None, n: int) -> list[list]:
    """``images`` as ``n`` lists of sources (None: no images anywhere)."""
    if images is None:
        return [[] for _ in range(n)]
    images = list(images)
    if len(images) != n:
        raise ValueError(f"{n} prompts but {len(images)} image entries: give one entry per prompt")
    return [images_of(v) for v in images]


def load_for_model(source: Any, base_dir: str | os.PathLike | None, max_side: int | None, max_pixels: int | None):
    """An RGB image, upright, at most ``max_side`` on its longer side (None: as it is); raises ImageLoadError.

    A JPEG larger than ``max_side`` is decoded at a reduced DCT scale (never below ``max_side``) first.
    """
    from PIL import Image

    from dataflow.media import load_image

    img = load_image(source, base_dir, draft_size=max_side, max_pixels=max_pixels)
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def image_data_url(
    source: Any,
    base_dir: str | os.PathLike | None,
    max_side: int | None,
    max_pixels: int | None,
    image_format: str = "jpeg",
    jpeg_quality: int = 90,
) -> str:
    """The ``data:`` URL of one image as a model gets it; raises ImageLoadError for an unreadable one.

    A JPEG the model can take as it is (upright, RGB or grey, within ``max_side``) goes as its own bytes:
    no second generation of compression loss, and no encode. It is still decoded whole first (at 1/8 DCT
    scale, which reads every block), so a truncated or lying file fails with the loader's reason as any
    other. Every other image is decoded, shrunk to ``max_side`` and encoded as ``image_format``.
    """
    from PIL import Image

    from dataflow.media import load_image
    from dataflow.media.loader import read_source_bytes

    if image_format == "jpeg" and not isinstance(source, Image.Image):
        load_image(source, base_dir, draft_size=1, max_pixels=max_pixels)  # the whole stream is sound
        data, _ = read_source_bytes(source, base_dir)
        if data[:3] == b"\xff\xd8\xff":
            with Image.open(io.BytesIO(data)) as raw:
                upright = raw.getexif().get(0x0112, 1) in (None, 1)
                as_is = upright and raw.mode in ("RGB", "L") and (max_side is None or max(raw.size) <= max_side)
            if as_is:
                return f"data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')}"
    img = load_for_model(source, base_dir, max_side, max_pixels)
    return data_url(img, image_format, jpeg_quality)


def data_url(img, image_format: str = "jpeg", jpeg_quality: int = 90) -> str:
    """``data:image/<format>;base64,...`` of an RGB image."""
    buffer = io.BytesIO()
    if image_format == "png":
        img.save(buffer, "PNG")
    else:
        img.save(buffer, "JPEG", quality=jpeg_quality)
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def openai_messages(conversation: list[dict], urls: list[str], system_prompt: str | None) -> list[dict]:
    """OpenAI chat messages of one request: the system prompt, then the turns; the images (``data:`` URLs)
    go with the last user turn, before its text (a conversation without a user turn gets one for them)."""
    messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    last_user = max((i for i, t in enumerate(conversation) if t["role"] == "user"), default=None)
    for i, turn in enumerate(conversation):
        content = turn["content"]
        if i == last_user and urls:
            text = content if isinstance(content, str) else ""
            content = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
            content += [{"type": "text", "text": text}] if text else []
        messages.append({"role": turn["role"], "content": content})
    if last_user is None and urls:
        messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}} for u in urls]})
    return messages


def check_max_side(max_side: Any) -> None:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a number of pixels >= 1 or None, got {max_side!r}")


def check_image_format(image_format: Any, jpeg_quality: Any) -> None:
    if image_format not in ("jpeg", "png"):
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
