"""APIVLMServing_openai: any OpenAI-compatible chat-completions server (vLLM, SGLang, lmdeploy, Ollama, TGI,
hosted APIs), over the standard library's ``http.client`` (no ``openai`` or ``requests`` package)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import random
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import dataflow
from dataflow.log import get_logger, progress
from dataflow.media import DEFAULT_MAX_PIXELS, ImageLoadError
from dataflow.media.http_fetch import retry_after
from dataflow.serving.base import (
    DEFAULT_SYSTEM_PROMPT,
    ServingAuthError,
    ServingConnectionError,
    ServingError,
    VLMResult,
    VLMServingABC,
    check_image_format,
    check_max_side,
    conversation_of,
    image_data_url,
    openai_messages,
    per_request_images,
)

logger = get_logger("dataflow.serving")

USER_AGENT = f"dataflow/{dataflow.__version__} (Python http.client)"
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx: what OpenAI's own client retries
ERROR_TEXT_LIMIT = 300  # characters of a server's error message kept in a row's detail


class APIVLMServing_openai(VLMServingABC):
    """Sends each request to ``<api_url>/chat/completions`` as OpenAI's chat format: a system message, then a
    user message with the images (base64 ``data:`` URLs) and the text; the answer is
    ``choices[0].message.content``.

    Images are decoded once by ``dataflow.media`` (upright: EXIF orientation applied), shrunk to fit in
    ``max_side`` x ``max_side`` when it is set, and re-encoded (JPEG, or PNG). A JPEG that needs no change
    (upright, RGB or grey, within ``max_side``) is sent as its own bytes once it decoded whole: no second
    round of compression loss. ``max_workers`` threads send
    requests at once, each over its own keep-alive connection. Timeouts, dropped connections, 408, 409, 429
    and 5xx answers are retried up to ``max_retries`` times with exponential backoff and jitter (a
    ``Retry-After`` is honoured up to ``max_retry_wait``); other 4xx answers fail their request at once.

    A request that still fails gets a null text and a reason (``timeout``, ``connection``, ``http_429``,
    ``http_5xx``, ``http_4xx``, ``bad_response``, ``empty_response``); an unreadable image fails its request
    with the loader's reason, without sending it. What no request can get past stops the run with one
    message: a server that cannot be reached when the run starts (``ServingConnectionError`` naming the
    URL), a refused key (401 / 403, ``ServingAuthError`` naming the environment variable) and a 404 (a wrong
    ``api_url`` or ``model_name``).

    The API key is read from the environment variable ``key_name_of_api_key`` when requests are sent, never
    stored (so it is in no manifest). Unlike DataFlow-MM, a missing key is not an error: local servers
    (``vllm serve`` without ``--api-key``) need none, so the requests then go without an Authorization
    header. Proxy variables (``HTTPS_PROXY``) are not used.

    Parameters:
        api_url: base URL of the server's OpenAI API (``http://127.0.0.1:8000/v1`` for ``vllm serve``);
            ``/chat/completions`` is added unless it is there already
        key_name_of_api_key: environment variable holding the API key (sent as ``Authorization: Bearer``)
        model_name: the ``model`` of each request (what the server calls it: ``vllm serve``'s model path
            or ``--served-model-name``)
        image_io: DataFlow-MM's saver of images found in answers; only None is supported
        send_request_stream: accepted for DataFlow-MM's scripts; answers are always read whole (the text
            is the same)
        max_workers: requests in flight at once (threads)
        timeout: seconds to connect, and to wait for the answer (a long caption on a busy server takes a
            while: DataFlow-MM waits 1800)
        max_retries: retries after a timeout, a dropped connection, 408, 409, 429 or a 5xx (so at most
            ``max_retries + 1`` requests per row)
        backoff: seconds before the first retry, doubled each time after, with jitter (a wait is between
            half and all of it)
        max_retry_wait: the longest wait before one retry, in seconds (a Retry-After too)
        max_side: longest side, in pixels, of the images sent (larger ones are shrunk to fit, aspect kept);
            None sends them at full size, as DataFlow-MM does
        image_format: how images are encoded: ``"jpeg"`` or ``"png"``
        jpeg_quality: JPEG quality of the images sent
        temperature: sampling temperature sent with each request; None leaves it to the server
        max_tokens: the most tokens an answer may have; None leaves it to the server
        top_p: nucleus sampling sent with each request; None leaves it to the server
        extra_body: more fields of the request JSON (``{"top_k": 20}``, ``{"max_completion_tokens": 300}``)
        max_pixels: decompression-bomb guard: an image with more pixels fails as ``too_large``
    """

    def __init__(
        self,
        api_url: str = "https://api.openai.com/v1",
        key_name_of_api_key: str = "DF_API_KEY",
        model_name: str = "o4-mini",
        image_io: Any = None,
        send_request_stream: bool = False,
        max_workers: int = 10,
        timeout: float = 1800,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_retry_wait: float = 30.0,
        max_side: int | None = None,
        image_format: str = "jpeg",
        jpeg_quality: int = 90,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        extra_body: dict | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        super().__init__()
        if image_io is not None:
            raise NotImplementedError("image_io (saving images found in answers) is not supported; pass None")
        endpoint(api_url)  # a malformed URL fails when the pipeline is built, not when it runs
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not _seconds(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        for name, value in (("backoff", backoff), ("max_retry_wait", max_retry_wait)):
            if not _seconds(value) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        check_max_side(max_side)
        check_image_format(image_format, jpeg_quality)
        if extra_body is not None and not isinstance(extra_body, dict):
            raise ValueError(f"extra_body must be a mapping of request fields, got {type(extra_body).__name__}")
        if not model_name:
            raise ValueError("model_name is required (the model the server serves)")
        self.api_url = api_url
        self.key_name_of_api_key = key_name_of_api_key
        self.model_name = model_name
        self.send_request_stream = send_request_stream
        self.max_workers = max_workers
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self.max_side = max_side
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.extra_body = extra_body
        self.max_pixels = max_pixels
        if send_request_stream:
            logger.info("%s: send_request_stream is accepted but answers are read whole", type(self).__name__)

    # ------------------------------------------------------------------------------------------ requests
    def request_body(self, conversation: list[dict], urls: list[str], system_prompt: str | None) -> dict:
        """The chat-completions JSON of one request: the images go with the last user turn, before its text."""
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": openai_messages(conversation, urls, system_prompt),
        }
        for name in ("temperature", "max_tokens", "top_p"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        body.update(self.extra_body or {})
        return body

    def generate_results(
        self,
        prompts: Sequence[Any],
        images: Sequence[Any] | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        base_dir: str | os.PathLike | None = None,
        desc: str = "",
        on_result: Callable[[int, VLMResult], None] | None = None,
    ) -> list[VLMResult]:
        prompts = list(prompts)
        sources = per_request_images(images, len(prompts))
        if not prompts:
            return []
        client = _Client(self)
        client.check_reachable()
        results: list[VLMResult | None] = [None] * len(prompts)
        order = iter(range(len(prompts)))
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []
        bar = progress(total=len(prompts), desc=desc or type(self).__name__, unit="req")

        def worker() -> None:
            try:
                while not stop.is_set():
                    with lock:
                        i = next(order, None)
                    if i is None:
                        return
                    result = self._one(client, prompts[i], sources[i], system_prompt, base_dir, stop)
                    with lock:
                        results[i] = result
                        bar.update(1)
                        if on_result is not None:
                            on_result(i, result)
            except BaseException as exc:  # ServingError (a refused key) or a bug: handed to the caller's thread
                with lock:
                    errors.append(exc)
                stop.set()

        # Daemon threads: an interrupted run does not wait for answers still being generated.
        threads = [
            threading.Thread(target=worker, name=f"dataflow-vlm-{n}", daemon=True)
            for n in range(min(self.max_workers, len(prompts)))
        ]
        try:
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.2)  # short joins keep Ctrl-C responsive
        except BaseException:
            stop.set()
            raise
        finally:
            bar.close()
            client.close()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def _one(self, client: _Client, prompt, sources: list, system_prompt, base_dir, stop: threading.Event) -> VLMResult:
        urls = []
        for source in sources:
            try:
                options = (self.max_side, self.max_pixels, self.image_format, self.jpeg_quality)
                urls.append(image_data_url(source, base_dir, *options))
            except ImageLoadError as exc:
                return VLMResult(reason=exc.reason, detail=exc.detail or exc.reason, image_failed=True)
        body = json.dumps(self.request_body(conversation_of(prompt), urls, system_prompt)).encode("utf-8")
        del urls
        return client.send(body, stop)


def endpoint(api_url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path)`` of the chat-completions endpoint under ``api_url``."""
    if not isinstance(api_url, str) or not api_url.strip():
        raise ValueError(f"api_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {api_url!r}")
    parts = urlsplit(api_url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"api_url {api_url!r}: {exc}") from None
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"api_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {api_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    if parts.query:
        path += f"?{parts.query}"
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_message(data: bytes) -> str:
    """The words of an error answer: OpenAI's ``{"error": {"message"}}``, FastAPI's ``detail``, or the text."""
    text = data.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:ERROR_TEXT_LIMIT]
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:ERROR_TEXT_LIMIT]
        for key in ("message", "detail", "error"):
            if payload.get(key):
                return str(payload[key])[:ERROR_TEXT_LIMIT]
    return text[:ERROR_TEXT_LIMIT]


def answer_text(data: bytes) -> tuple[str | None, str | None, str | None]:
    """``(text, reason, detail)`` of a 200 answer: the first choice's message content (a string, or a list of
    text parts), else why there is none."""
    try:
        payload = json.loads(data)
        content = payload["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        shown = data[:200].decode("utf-8", "replace")
        return None, "bad_response", f"not a chat-completions answer: {shown!r}"
    if isinstance(content, list):  # content parts: the text ones, in order
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        finish = payload["choices"][0].get("finish_reason") if isinstance(payload["choices"][0], dict) else None
        return None, "empty_response", f"the model answered with no text (finish_reason {finish!r})"
    return content.strip(), None, None


class _Client:
    """One run's connections (one keep-alive connection per worker thread) and its retry policy."""

    def __init__(self, serving: APIVLMServing_openai):
        self.serving = serving
        self.scheme, self.host, self.port, self.path = endpoint(serving.api_url)
        key = os.environ.get(serving.key_name_of_api_key or "", "")
        self.has_key = bool(key.strip())
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self.has_key:
            self.headers["Authorization"] = f"Bearer {key.strip()}"
        elif not _is_local(self.host):
            logger.warning(
                "%s: no API key in $%s; requests to %s go without one",
                type(serving).__name__,
                serving.key_name_of_api_key,
                serving.api_url,
            )
        self.context = ssl.create_default_context() if self.scheme == "https" else None
        self.local = threading.local()
        self.all: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()
        self.rng = random.Random(os.urandom(8))

    # -- connections
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            timeout = self.serving.timeout
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self.local.conn = conn
            with self.lock:
                self.all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def close(self) -> None:
        with self.lock:
            for conn in self.all:
                conn.close()
            self.all.clear()

    def wait(self, attempt: int, hint: float | None, stop: threading.Event) -> None:
        """Sleep before retry number ``attempt + 1``: the server's Retry-After, else equal-jitter backoff."""
        limit = self.serving.max_retry_wait
        if hint is not None:
            delay = min(hint, limit)
        else:
            step = self.serving.backoff * 2**attempt
            with self.lock:
                delay = min(step / 2 + self.rng.uniform(0, step / 2), limit)
        stop.wait(delay)

    # -- the server is there at all
    def check_reachable(self) -> None:
        """Open one TCP connection (retried like a request): if none can be made, no request can be sent, so
        the run stops with one message naming the URL instead of a ``connection`` reason on every row."""
        why = ""
        for attempt in range(self.serving.max_retries + 1):
            try:
                socket.create_connection((self.host, self.port), timeout=min(self.serving.timeout, 30)).close()
                return
            except socket.gaierror as exc:
                raise ServingConnectionError(
                    f"cannot resolve the host of {self.serving.api_url} ({exc.strerror or exc}); check api_url"
                ) from None
            except TimeoutError:
                why = f"no answer within {min(self.serving.timeout, 30):g} s"
            except OSError as exc:
                why = exc.strerror or str(exc) or type(exc).__name__
            if attempt < self.serving.max_retries:
                self.wait(attempt, None, threading.Event())
        tries = self.serving.max_retries + 1
        raise ServingConnectionError(
            f"cannot connect to the VLM server at {self.serving.api_url} ({why}; {tries} attempt(s)). "
            "Is it running? `vllm serve <model>` listens on http://127.0.0.1:8000/v1; "
            "otherwise set api_url to the server's OpenAI-compatible base URL"
        )

    # -- one request, retried
    def send(self, body: bytes, stop: threading.Event) -> VLMResult:
        attempts = 0
        while True:
            attempts += 1
            kind, result, hint = self._attempt(body)
            result.requests = attempts
            if kind in ("ok", "fail"):
                return result
            if attempts > self.serving.max_retries or stop.is_set():
                if attempts > 1:
                    result.detail = f"{result.detail} ({attempts} requests)"
                return result
            self.wait(attempts - 1, hint, stop)

    def _attempt(self, body: bytes) -> tuple[str, VLMResult, float | None]:
        """``("ok" | "fail" | "retry", result, retry-after seconds)`` of one request; fatal answers raise."""
        try:
            status, data, headers = self._post(body)
        except TimeoutError:
            self._drop()
            return "retry", VLMResult(reason="timeout", detail=f"no answer within {self.serving.timeout:g} s"), None
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            raise ServingConnectionError(
                f"TLS certificate of {self.host} refused ({exc.verify_message or exc}); check api_url"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or "closed"
            return "retry", VLMResult(reason="connection", detail=f"{type(exc).__name__}: {what}"), None
        if status == 200:
            text, reason, detail = answer_text(data)
            return ("ok" if reason is None else "fail"), VLMResult(text, reason, detail, status=status), None
        message = server_message(data)
        words = f"HTTP {status}" + (f": {message}" if message else "")
        if status in (401, 403):
            name = self.serving.key_name_of_api_key
            state = "is not set" if not self.has_key else "is set, but the server refused it"
            raise ServingAuthError(
                f"{self.serving.api_url} refused the request ({words}). The API key is read from the "
                f"environment variable {name}, which {state}: export {name}=<your key> (or pass "
                "key_name_of_api_key= naming the variable that holds it)"
            )
        if status == 404:
            raise ServingError(
                f"{self.serving.api_url}: HTTP 404 for POST {self.path} ({message or 'not found'}): check api_url "
                f"(the base URL, ending in /v1 for most servers) and model_name={self.serving.model_name!r}"
            )
        hint = retry_after(headers.get("Retry-After"))
        if status in RETRY_STATUSES or 500 <= status < 600:
            reason = "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx"
            return "retry", VLMResult(reason=reason, detail=words, status=status), hint
        return "fail", VLMResult(reason="http_4xx", detail=words, status=status), None

    def _post(self, body: bytes) -> tuple[int, bytes, dict]:
        conn = self._connection()
        reused = conn.sock is not None
        try:
            conn.request("POST", self.path, body=body, headers=self.headers)
            resp = conn.getresponse()
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            if not reused:
                raise
            # The server closed an idle keep-alive connection before this request reached it: send it once
            # more on a fresh connection (not a retry; urllib3 does the same).
            conn.close()
            conn.request("POST", self.path, body=body, headers=self.headers)
            resp = conn.getresponse()
        data = resp.read()
        headers = {k.title(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self._drop()
        return resp.status, data, headers
