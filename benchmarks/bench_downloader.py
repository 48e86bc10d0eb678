"""Download benchmark: ImageDownloader against a plain ``concurrent.futures`` + ``urllib`` loop.

A local ``ThreadingHTTPServer`` (in its own process, so that it does not share the clients' GIL) serves
``--images`` small JPEGs (default 2000, each different, ~2-4 KB). Both methods fetch every URL with the same
number of requests in flight (``--workers``, default 16) and write each body to its own file:

  urllib_loop       baseline: ``ThreadPoolExecutor(workers).map(fetch)``, ``fetch`` = ``urllib.request.urlopen``
                    then ``read()``, then the bytes to ``<sha1 of the URL>.jpg`` (no check, no retries)
  image_downloader  ``ImageDownloader(max_workers=workers, max_per_host=workers).run(...)`` over a JSON lines
                    table of the URLs, end to end: reading the step, fetching, checking each body is an
                    image, writing each file atomically, writing the step and its manifest

Before any rate is printed each method's output is checked: every URL fetched, and every file's bytes equal
to the served ones. Each method runs ``--repeat`` times, alternating, each time into a fresh folder (nothing
reused); the best and the median run of each are reported, then the ratios (images/s of ImageDownloader / of the loop).

The server speaks HTTP/1.1 (keep-alive) by default; ``--http10`` makes it close every connection, which
takes away ImageDownloader's connection reuse (urllib never reuses one).

Usage::

    .venv/bin/python benchmarks/bench_downloader.py                      # 2000 images, 16 in flight
    .venv/bin/python benchmarks/bench_downloader.py --workers 4 --http10
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(n: int) -> list[bytes]:
    """``n`` different small JPEGs, deterministic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1234)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((64, 48), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def serve(folder: str, http10: bool, port_queue) -> None:
    """The server process: every file of ``folder`` at ``/img/<name>``, from memory."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {p.name: p.read_bytes() for p in Path(folder).iterdir()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0" if http10 else "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            # As production servers do on keep-alive connections (nginx: tcp_nodelay on): without it the
            # body, written after the headers, waits for the client's delayed ACK (40 ms) on every response.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self):
            body = files.get(self.path.rsplit("/", 1)[-1])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

        def handle_error(self, request, client_address):
            pass

    httpd = Server(("127.0.0.1", 0), Handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, threads included, or of process ``pid`` (Linux /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def digest(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


def urllib_loop(urls: list[str], out: Path, workers: int) -> dict[str, Path]:
    def fetch(url: str) -> tuple[str, Path]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = resp.read()
        path = out / f"{digest(url)}.jpg"
        path.write_bytes(data)
        return url, path

    out.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(fetch, urls))


def image_downloader(urls: list[str], out: Path, workers: int) -> dict[str, Path]:
    from dataflow.operators.core_vision import ImageDownloader
    from dataflow.utils.storage import FileStorage

    out.mkdir(parents=True)
    src = out / "urls.jsonl"
    src.write_text("".join(json.dumps({"url": u}) + "\n" for u in urls))
    storage = FileStorage(src, cache_path=out / "cache", file_name_prefix="bench")
    ImageDownloader(max_workers=workers, max_per_host=workers).run(storage.step())
    meta = storage.manifest(1)
    if meta["rows_rejected"]:
        raise SystemExit(f"image_downloader rejected rows: {meta['rejected_reasons']}")
    df = storage.step().read()
    return {u: Path(p) for u, p in zip(df["url"], df["image"])}


METHODS = {"urllib_loop": urllib_loop, "image_downloader": image_downloader}


def check(name: str, got: dict[str, Path], expected: dict[str, bytes]) -> None:
    missing = set(expected) - set(got)
    if missing:
        raise SystemExit(f"{name}: {len(missing)} URL(s) not fetched, e.g. {sorted(missing)[:3]}")
    wrong = [u for u, data in expected.items() if got[u].read_bytes() != data]
    if wrong:
        raise SystemExit(f"{name}: {len(wrong)} file(s) differ from the served bytes, e.g. {wrong[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--http10", action="store_true", help="the server closes every connection")
    args = parser.parse_args()
    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")

    work = Path(tempfile.mkdtemp(prefix="bench_downloader_"))
    try:
        served = work / "served"
        served.mkdir()
        images = make_images(args.images)
        for i, data in enumerate(images):
            (served / f"{i:05d}.jpg").write_bytes(data)
        queue = multiprocessing.get_context("spawn").Queue()
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(str(served), args.http10, queue), daemon=True
        )
        server.start()
        port = queue.get(timeout=30)
        urls = [f"http://127.0.0.1:{port}/img/{i:05d}.jpg" for i in range(args.images)]
        expected = dict(zip(urls, images))
        urllib_loop(urls[:50], work / "warmup", args.workers)  # server threads and imports warm

        best: dict[str, float] = {}
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        cpus: dict[str, list[float]] = {name: [] for name in METHODS}
        for r in range(args.repeat):
            for name, method in METHODS.items():
                out = work / f"{name}_{r}"
                cpu, server_cpu = process_cpu(), process_cpu(server.pid)
                started = time.perf_counter()
                got = method(urls, out, args.workers)
                seconds = time.perf_counter() - started
                cpu, server_cpu = process_cpu() - cpu, process_cpu(server.pid) - server_cpu
                check(name, got, expected)
                best[name] = min(best.get(name, float("inf")), seconds)
                times[name].append(seconds)
                cpus[name].append(cpu)
                print(
                    f"  run {r + 1} {name:17s} {seconds:6.2f} s  {len(urls) / seconds:7.0f} img/s   CPU seconds: "
                    f"client {cpu:5.2f}, server {server_cpu:5.2f}",
                    flush=True,
                )
                shutil.rmtree(out)
        server.terminate()
        protocol = "HTTP/1.0, no keep-alive" if args.http10 else "HTTP/1.1 keep-alive"
        print(f"\n{args.images} images, {args.workers} in flight, server {protocol}, best of {args.repeat}:")
        for name, seconds in best.items():
            median = statistics.median(times[name])
            print(
                f"  {name:17s} best {seconds:6.2f} s {args.images / seconds:7.0f} img/s"
                f"   median {median:6.2f} s {args.images / median:7.0f} img/s"
                f"   client CPU {statistics.median(cpus[name]) / args.images * 1e3:.2f} ms/img (median)"
            )
        ratio = best["urllib_loop"] / best["image_downloader"]
        median_ratio = statistics.median(times["urllib_loop"]) / statistics.median(times["image_downloader"])
        print(f"  ratio (image_downloader / urllib_loop, images/s): best {ratio:.2f}x, median {median_ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
