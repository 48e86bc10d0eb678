"""Fetching many URLs over HTTP(S) politely, with the standard library only (``http.client`` and threads).

:func:`fetch_all` fetches a list of URLs with ``max_workers`` threads that take their URLs from one
scheduler: at most ``max_per_host`` requests at a time to one host (the scheduler never hands a worker a URL
whose host is full, so no worker sits blocked while other hosts wait), redirects followed one request at a
time (each hop counts against its own host), and retries with exponential backoff and jitter on timeouts,
connection errors, 408, 429 and 5xx. A ``Retry-After`` header is honoured (up to ``max_retry_wait``) and
pauses the whole host, not just one URL. Each worker keeps its connections open between requests
(keep-alive) and host names are resolved once per run (with a timeout: ``getaddrinfo`` itself has none).

Every failure is a :class:`FetchResult` with a reason code (``REASONS``) and a detail, never an exception;
the caller's ``store`` callback turns a body into whatever it keeps (a file on disk) and may refuse it with
:class:`FetchError`. Anything else ``store`` raises (a full disk) ends the run: it is not the URL's fault.
"""

from __future__ import annotations

import email.utils
import heapq
import http.client
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import dataflow

REASONS = (
    "http_404",
    "http_4xx",
    "http_5xx",
    "http_3xx",
    "timeout",
    "too_large",
    "not_an_image",
    "dns",
    "connection",
    "invalid_url",
    "redirect_loop",
)
USER_AGENT = f"dataflow/{dataflow.__version__} (image dataset curation; Python http.client)"
SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({300, 301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
CHUNK = 256 * 1024
DRAIN_LIMIT = 64 * 1024  # an error body up to this size is read so the connection can serve the next request
DNS_TTL = 300.0  # seconds a resolved address is reused within a run
CONNECTIONS_PER_WORKER = 8  # open keep-alive connections one worker thread keeps (least recently used go)
ATTEMPT_TIMEOUTS = 10  # one attempt ends after this many `timeout`s in all (a server dripping bytes)
# Characters left as they are when a URL is cleaned: the reserved set and "%" (an existing escape stays one).
_URL_SAFE = "%/:=&?~+!$,;'@()*[]"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[!-~]+")  # printable ASCII, no space


class FetchError(Exception):
    """Raised by a ``store`` callback to refuse a body: ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown fetch reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class FetchResult:
    """What became of one URL: ``value`` (what ``store`` returned), or ``reason`` and ``detail``.

    ``status`` is the last HTTP status seen (None when no response came), ``requests`` the requests sent
    (retries and redirect hops included), ``url`` the last URL requested (after redirects).
    """

    value: Any = None
    reason: str | None = None
    detail: str | None = None
    status: int | None = None
    requests: int = 0
    url: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class FetchOptions:
    """How :func:`fetch_all` fetches (the operator's parameters of the same names)."""

    max_workers: int = 16
    max_per_host: int = 4
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 1.0
    max_retry_wait: float = 30.0
    max_redirects: int = 5
    max_bytes: int | None = 20_000_000
    user_agent: str = USER_AGENT

    def __post_init__(self):
        for name in ("max_workers", "max_per_host"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("retries", "max_redirects"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        for name in ("backoff", "max_retry_wait"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.max_bytes is not None and (not isinstance(self.max_bytes, int) or self.max_bytes < 1):
            raise ValueError(f"max_bytes must be an integer >= 1 or None, got {self.max_bytes!r}")


# ------------------------------------------------------------------------------------------ URLs
def check_url(value: Any) -> tuple[str | None, str | None]:
    """``(url, None)`` for a fetchable http(s) URL (spaces and non-ASCII characters percent-encoded), else
    ``(None, why)``. Only http and https are fetched: ``file://`` would read the local disk, ``ftp://`` and
    the rest are refused too."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType":
        return None, "no URL (null)"
    if not isinstance(value, str):
        return None, f"not a URL: a {type(value).__name__}"
    text = value.strip()
    if not text:
        return None, "empty URL"
    if _CONTROL.search(text):
        return None, f"control character in URL {text[:200]!r}"
    try:
        parts = urlsplit(text)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        return None, f"malformed URL {text[:200]!r}: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme}://" if scheme else "no scheme"
        return None, f"{shown} is not fetched (only http:// and https://): {text[:200]!r}"
    if not parts.hostname:
        return None, f"no host in URL {text[:200]!r}"
    del port
    if text.startswith(scheme) and "#" not in text and _PLAIN.fullmatch(text):
        return text, None  # the common case: nothing to encode
    # Spaces and non-ASCII characters in the path and query are sent percent-encoded, as browsers do; the
    # host stays as it is (an international name is IDNA-encoded when it is looked up and sent).
    clean = urlunsplit((scheme, parts.netloc, quote(parts.path, _URL_SAFE), quote(parts.query, _URL_SAFE), ""))
    return clean, None


def host_key(url: str) -> str:
    """The host a URL counts against for ``max_per_host``: ``host:port``."""
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme.lower() == 'https' else 80)}"


def url_hint(values: Iterable[Any], operator: str | None = None, sample: int = 200) -> str | None:
    """When an image column holds URLs instead of images: a sentence saying so and naming the operator to add
    before the step (by default the built-in whose ``run`` takes an ``input_url_key``); else None.

    Looks at the first ``sample`` non-null values; it speaks when most of them are http(s) URLs.
    """
    seen, urls, first = 0, 0, None
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        seen += 1
        if isinstance(value, str) and value.strip().lower().startswith(("http://", "https://")):
            urls += 1
            first = first or value.strip()
        if seen >= sample:
            break
    if not seen or urls * 2 <= seen:
        return None
    name = operator or _url_operator()
    add = f"add {name} before this step" if name else "download them first (an operator that fetches URLs)"
    shown = first if len(first) <= 80 else first[:77] + "..."
    return f"column holds URLs ({shown}, {urls} of {seen} values looked at): {add}"


def _url_operator() -> str | None:
    """The operator that fetches URLs, found by what it declares (its ``run`` takes ``input_url_key``)."""
    import inspect

    from dataflow.core.registry import OPERATOR_REGISTRY

    OPERATOR_REGISTRY.load_builtins()
    for name, cls in sorted(OPERATOR_REGISTRY._obj_map.items()):
        run = getattr(cls.run, "__wrapped_run__", cls.run)
        try:
            if "input_url_key" in inspect.signature(run).parameters:
                return name
        except (TypeError, ValueError):
            continue
    return None


# ------------------------------------------------------------------------------------------ one request
class _Attempt:
    """What one request did: ``kind`` is ``ok`` (``body``), ``redirect`` (``location``), ``retry`` or ``fail``."""

    __slots__ = ("kind", "reason", "detail", "status", "location", "retry_after", "body", "content_type", "value")

    def __init__(self, kind, reason=None, detail=None, status=None, location=None, retry_after=None):
        self.kind, self.reason, self.detail, self.status = kind, reason, detail, status
        self.location, self.retry_after = location, retry_after
        self.body: bytes | None = None
        self.content_type: str | None = None
        self.value: Any = None


class _Failure(Exception):
    def __init__(self, kind: str, reason: str, detail: str, status: int | None = None):
        super().__init__(detail)
        self.kind, self.reason, self.detail, self.status = kind, reason, detail, status


class _HTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to addresses resolved beforehand (by :class:`_Resolver`, which has a timeout)."""

    def __init__(self, host: str, port: int, timeout: float, addresses: list):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self):
        error: OSError | None = None
        for family, socktype, proto, _, address in self._addresses:
            sock = socket.socket(family, socktype, proto)
            try:
                sock.settimeout(self.timeout)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock = sock
                return
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"no address to connect to for {self.host}")


class _HTTPSConnection(_HTTPConnection):
    default_port = 443

    def __init__(self, host: str, port: int, timeout: float, addresses: list, context: ssl.SSLContext):
        super().__init__(host, port, timeout, addresses)
        self._context = context

    def connect(self):
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


class _Resolver:
    """``getaddrinfo`` once per host per run, with a timeout (the call itself has none), failures included."""

    def __init__(self, timeout: float, workers: int):
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataflow-dns")
        self._cache: dict[tuple[str, int], tuple[float, Future]] = {}
        self._lock = threading.Lock()

    def resolve(self, host: str, port: int) -> list:
        key = (host, port)
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or entry[0] < time.monotonic():
                future = self._pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
                entry = self._cache[key] = (time.monotonic() + DNS_TTL, future)
        try:
            return entry[1].result(timeout=self.timeout)
        except FutureTimeout:
            self._forget(key, entry)
            raise _Failure("retry", "dns", f"no answer resolving {host} within {self.timeout:g} s") from None
        except UnicodeError as exc:  # a label IDNA cannot encode (empty, over 63 characters)
            raise _Failure("fail", "dns", f"{host!r} is not a valid host name: {exc}") from None
        except socket.gaierror as exc:
            temporary = exc.errno == socket.EAI_AGAIN
            if temporary:  # asked again on the retry; a name that does not exist stays failed for the run
                self._forget(key, entry)
            kind = "retry" if temporary else "fail"
            raise _Failure(kind, "dns", f"cannot resolve {host}: {exc.strerror or exc}") from None

    def _forget(self, key, entry) -> None:
        with self._lock:
            if self._cache.get(key) is entry:
                del self._cache[key]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)  # a hung lookup must not hold up the run's end


class _Fetcher:
    """One request at a time per worker thread, over that thread's keep-alive connections."""

    def __init__(self, options: FetchOptions):
        self.options = options
        self.resolver = _Resolver(options.timeout, workers=min(8, options.max_workers))
        self.context = ssl.create_default_context()
        self.headers = {
            "User-Agent": options.user_agent,
            "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",  # bytes as stored; gzip/deflate are still decoded if sent
        }
        self._local = threading.local()
        self._all: list[OrderedDict] = []
        self._lock = threading.Lock()

    # -- connections
    def _pool(self) -> OrderedDict:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = OrderedDict()
            with self._lock:
                self._all.append(pool)
        return pool

    def _connection(self, scheme: str, host: str, port: int) -> _HTTPConnection:
        pool, key = self._pool(), (scheme, host, port)
        conn = pool.get(key)
        if conn is not None:
            pool.move_to_end(key)
            return conn
        addresses = self.resolver.resolve(host, port)
        timeout = self.options.timeout
        if scheme == "https":
            conn = _HTTPSConnection(host, port, timeout, addresses, self.context)
        else:
            conn = _HTTPConnection(host, port, timeout, addresses)
        pool[key] = conn
        while len(pool) > CONNECTIONS_PER_WORKER:
            pool.popitem(last=False)[1].close()
        return conn

    def _drop(self, scheme: str, host: str, port: int) -> None:
        conn = self._pool().pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for pool in self._all:
                for conn in list(pool.values()):
                    conn.close()
                pool.clear()
        self.resolver.close()

    # -- one request
    def attempt(self, url: str) -> _Attempt:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            return self._request(scheme, host, port, target)
        except _Failure as exc:
            self._drop(scheme, host, port)
            return _Attempt(exc.kind, exc.reason, exc.detail, exc.status)
        except ssl.SSLCertVerificationError as exc:
            self._drop(scheme, host, port)
            return _Attempt("fail", "connection", f"TLS certificate of {host} refused: {exc.verify_message or exc}")
        except TimeoutError:
            self._drop(scheme, host, port)
            return _Attempt("retry", "timeout", f"no answer from {host} within {self.options.timeout:g} s")
        except socket.gaierror as exc:
            self._drop(scheme, host, port)
            return _Attempt("fail", "dns", f"cannot resolve {host}: {exc.strerror or exc}")
        except (OSError, http.client.HTTPException) as exc:
            self._drop(scheme, host, port)
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or "closed"
            return _Attempt("retry", "connection", f"{type(exc).__name__} from {host}: {what}")
        except zlib.error as exc:
            self._drop(scheme, host, port)
            return _Attempt("fail", "not_an_image", f"cannot decode the body's Content-Encoding: {exc}")
        except Exception as exc:  # one URL's odd answer never ends the run; the detail names what it was
            self._drop(scheme, host, port)
            return _Attempt("fail", "connection", f"{type(exc).__name__} talking to {host}: {exc}")

    def _request(self, scheme: str, host: str, port: int, target: str) -> _Attempt:
        conn = self._connection(scheme, host, port)
        reused = conn.sock is not None
        try:
            conn.request("GET", target, headers=self.headers)
            resp = conn.getresponse()
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            if not reused:
                raise
            # The server closed an idle keep-alive connection: the request never reached it, so send it once
            # more on a fresh connection (not a retry; urllib3 and browsers do the same).
            conn.close()
            conn.request("GET", target, headers=self.headers)
            resp = conn.getresponse()
        status = resp.status
        deadline = time.monotonic() + self.options.timeout * ATTEMPT_TIMEOUTS
        if status in REDIRECT_STATUSES and resp.getheader("Location"):
            self._drain(resp, scheme, host, port)
            return _Attempt("redirect", status=status, location=resp.getheader("Location").strip())
        if 200 <= status < 300:
            out = _Attempt("ok", status=status)
            out.body = self._body(resp, deadline, status)
            out.content_type = resp.getheader("Content-Type")
            if resp.will_close:
                self._drop(scheme, host, port)
            return out
        words = f"HTTP {status} {resp.reason}".strip()
        self._drain(resp, scheme, host, port)
        if status == 404:
            return _Attempt("fail", "http_404", words, status)
        if status in RETRY_STATUSES or 500 <= status < 600:
            reason = "http_5xx" if status >= 500 else "http_4xx"
            return _Attempt("retry", reason, words, status, retry_after=retry_after(resp.getheader("Retry-After")))
        if 400 <= status < 500:
            return _Attempt("fail", "http_4xx", words, status)
        if status in REDIRECT_STATUSES:
            return _Attempt("fail", "http_3xx", f"{words} without a Location header", status)
        return _Attempt("fail", "http_3xx" if 300 <= status < 400 else "http_4xx", f"{words}: not an answer", status)

    def _body(self, resp: http.client.HTTPResponse, deadline: float, status: int) -> bytes:
        limit = self.options.max_bytes
        length = resp.getheader("Content-Length")
        if limit is not None and length and length.strip().isdigit() and int(length) > limit:
            raise _Failure("fail", "too_large", f"Content-Length {int(length)} > max_bytes {limit}", status)
        encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(wbits=47 if encoding != "deflate" else zlib.MAX_WBITS)
        elif encoding in ("identity", ""):
            decoder = None
        else:
            raise _Failure("fail", "not_an_image", f"Content-Encoding {encoding!r} is not decoded", status)
        out = bytearray()
        while True:
            if time.monotonic() > deadline:
                raise _Failure(
                    "retry", "timeout", f"body not complete after {self.options.timeout * ATTEMPT_TIMEOUTS:g} s"
                )
            chunk = resp.read(CHUNK)  # read(), not read1(): it marks the response done at its Content-Length
            if not chunk:
                break
            if decoder is not None:
                room = (limit + 1 - len(out)) if limit is not None else 0
                chunk = decoder.decompress(chunk, room)
            out += chunk
            if limit is not None and len(out) > limit:
                raise _Failure("fail", "too_large", f"body larger than max_bytes {limit}", status)
        if decoder is not None:
            out += decoder.flush()
            if limit is not None and len(out) > limit:
                raise _Failure("fail", "too_large", f"body larger than max_bytes {limit}", status)
        return bytes(out)

    def _drain(self, resp: http.client.HTTPResponse, scheme: str, host: str, port: int) -> None:
        """Read a small body to the end so the connection serves the next request; close it otherwise."""
        length = resp.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) <= DRAIN_LIMIT and not resp.will_close:
            resp.read()
        else:
            self._drop(scheme, host, port)


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------------------------------ scheduling
@dataclass
class _Task:
    index: int
    url: str
    host: str
    retries: int = 0
    redirects: int = 0
    requests: int = 0
    visited: set = field(default_factory=set)


class _Scheduler:
    """Which URL a worker fetches next: hosts with a free slot, round-robin; retries and paused hosts wait.

    Workers take tasks and hand back what came of them under one lock; nothing passes through the caller's
    thread per URL (a hand-off per request costs more than the request itself on a fast server).
    """

    def __init__(self, options: FetchOptions, results: list, on_result):
        self.options, self.results, self.on_result = options, results, on_result
        self.cv = threading.Condition()
        self.queues: dict[str, deque[_Task]] = {}
        self.ready: deque[str] = deque()  # hosts with waiting tasks and a free slot
        self.is_ready: set[str] = set()
        self.inflight: Counter = Counter()
        self.paused: dict[str, float] = {}  # host -> monotonic time before which it gets no request
        self.timers: list[tuple[float, int, str, _Task | None]] = []  # (when, seq, host, task or None)
        self.seq = 0
        self.pending = 0  # tasks not finished
        self.stopped = False
        self.error: BaseException | None = None
        self.rng = random.Random(os.urandom(8))

    # -- under the lock
    def _offer(self, host: str) -> None:
        if host not in self.is_ready and self.queues.get(host) and self.inflight[host] < self.options.max_per_host:
            self.ready.append(host)
            self.is_ready.add(host)

    def _enqueue(self, task: _Task) -> None:
        self.queues.setdefault(task.host, deque()).append(task)
        self._offer(task.host)

    def _later(self, when: float, host: str, task: _Task | None) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, host, task))
        self.cv.notify_all()  # a worker waiting without a deadline must see the new one

    def _finish(self, index: int, result: FetchResult) -> None:
        self.results[index] = result
        self.pending -= 1
        if self.on_result is not None:
            self.on_result(index, result)
        if self.pending == 0:
            self.cv.notify_all()

    def _fail(self, task: _Task, reason: str, detail: str, status: int | None = None) -> None:
        self._finish(task.index, FetchResult(None, reason, detail, status, task.requests, task.url))

    # -- the public steps
    def add(self, index: int, value: Any) -> None:
        url, why = check_url(value)
        with self.cv:
            self.pending += 1
            if url is None:
                shown = value if isinstance(value, str) else ""
                self._finish(index, FetchResult(None, "invalid_url", why, None, 0, shown))
            else:
                self._enqueue(_Task(index, url, host_key(url), visited={url}))

    def take(self) -> _Task | None:
        """The next task for a worker (waiting until one may go), None when everything is done."""
        with self.cv:
            while not self.stopped and self.pending:
                now = time.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    _, _, host, task = heapq.heappop(self.timers)
                    if task is not None:
                        self._enqueue(task)  # a retry whose wait is over
                    else:
                        self._offer(host)  # a host whose Retry-After pause is over
                while self.ready:
                    host = self.ready.popleft()
                    self.is_ready.discard(host)
                    if self.paused.get(host, 0.0) > now:  # Retry-After: the whole host waits, then comes back
                        self._later(self.paused[host], host, None)
                        continue
                    queue = self.queues[host]
                    task = queue.popleft()
                    if not queue:
                        del self.queues[host]
                    self.inflight[host] += 1
                    task.requests += 1
                    self._offer(host)
                    return task
                self.cv.wait(self.timers[0][0] - now if self.timers else None)
            return None

    def done(self, task: _Task, got: _Attempt) -> None:
        with self.cv:
            self.inflight[task.host] -= 1
            self._offer(task.host)
            self._handle(task, got)
            self.cv.notify(2)  # a freed slot and a requeued task: at most two workers can go now

    def stop(self, error: BaseException | None = None) -> None:
        with self.cv:
            self.stopped = True
            self.error = self.error or error
            self.cv.notify_all()

    def _handle(self, task: _Task, got: _Attempt) -> None:
        options = self.options
        if got.kind == "ok":
            return self._finish(task.index, FetchResult(got.value, None, None, got.status, task.requests, task.url))
        if got.kind == "redirect":
            target, why = check_url(urljoin(task.url, got.location))
            if target is None:
                return self._fail(task, "invalid_url", f"HTTP {got.status} redirect refused: {why}", got.status)
            if target in task.visited:
                return self._fail(task, "redirect_loop", f"redirect loop: {task.url} -> {target} again", got.status)
            if task.redirects >= options.max_redirects:
                return self._fail(task, "redirect_loop", f"more than {options.max_redirects} redirects", got.status)
            task.url, task.host = target, host_key(target)
            task.redirects += 1
            task.visited.add(target)
            return self._enqueue(task)
        if got.kind == "retry" and task.retries < options.retries:
            now = time.monotonic()
            if got.retry_after is not None:
                delay = min(got.retry_after, options.max_retry_wait)
                self.paused[task.host] = max(self.paused.get(task.host, 0.0), now + delay)
            else:
                step = options.backoff * 2**task.retries
                delay = min(step / 2 + self.rng.uniform(0, step / 2), options.max_retry_wait)  # "equal jitter"
            task.retries += 1
            return self._later(now + delay, task.host, task)
        detail = got.detail or got.reason or "failed"
        if got.kind == "retry" and task.requests > 1:
            detail = f"{detail} ({task.requests} requests)"
        return self._fail(task, got.reason or "connection", detail, got.status)


def fetch_all(
    urls: Sequence[Any],
    store: Callable[[int, bytes, str | None], Any],
    options: FetchOptions | None = None,
    on_result: Callable[[int, FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Fetch every URL; ``store(index, body, content_type)`` runs in the worker thread for each body fetched
    and its return value becomes the result's ``value`` (it may raise :class:`FetchError` to refuse it).

    ``on_result(index, result)`` is called as each URL is done, from a worker thread under the scheduler's
    lock (keep it short: a progress bar). Invalid URLs (see :func:`check_url`) fail with ``invalid_url``
    without a request. Results are in the order of ``urls``. Anything else ``store`` raises ends the call.
    """
    options = options or FetchOptions()
    results: list[FetchResult | None] = [None] * len(urls)
    scheduler = _Scheduler(options, results, on_result)
    for i, value in enumerate(urls):
        scheduler.add(i, value)
    if not scheduler.pending:
        return results  # type: ignore[return-value]
    fetcher = _Fetcher(options)

    def worker() -> None:
        try:
            while (task := scheduler.take()) is not None:
                got = fetcher.attempt(task.url)
                if got.kind == "ok":  # checked and stored here, in parallel; the body is never queued
                    body, got.body = got.body, None
                    try:
                        got.value = store(task.index, body, got.content_type)
                    except FetchError as exc:
                        got.kind, got.reason, got.detail = "fail", exc.reason, exc.detail
                scheduler.done(task, got)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            scheduler.stop(exc)

    # Daemon threads: an interrupted run does not wait for requests still in flight to time out.
    count = min(options.max_workers, scheduler.pending)
    threads = [threading.Thread(target=worker, name=f"dataflow-fetch-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        with scheduler.cv:
            while scheduler.pending and not scheduler.stopped:
                scheduler.cv.wait(0.5)  # a timeout keeps Ctrl-C responsive
        if scheduler.error is not None:
            raise scheduler.error
    except BaseException:
        scheduler.stop()
        fetcher.close()
        raise
    scheduler.stop()
    for thread in threads:
        thread.join()
    fetcher.close()
    return results  # type: ignore[return-value]
