"""Captioning throughput: ImageCaptionGenerator over APIVLMServing_openai against a bare asyncio client loop.

A local chat-completions server (in its own process, so it shares no GIL with the clients) stands in for a
vLLM / SGLang server: each request waits ``--latency`` seconds (a model generating), then answers with the
request's prompt, so each caption can be checked against its row. The server counts the requests in
flight and reports the most it saw.

  asyncio_loop      baseline: ``--workers`` asyncio tasks, each on one keep-alive connection
                    (``asyncio.open_connection``, hand-written HTTP/1.1), posting per row the image file's
                    own bytes as a base64 data URL and the row's prompt; nothing decoded, nothing checked
  caption_operator  ``ImageCaptionGenerator(APIVLMServing_openai(max_workers=workers))`` end to end over a
                    JSON lines table: reading the step, decoding each image upright and re-encoding it,
                    the requests, the row journal, writing the step and its manifest

Before a rate is printed, each method's captions are checked: every row answered, with its own prompt. The
methods alternate ``--repeat`` times; the best run of each is reported, then the ratio.

``--memory-rows N`` then captions N rows (one small image each, a server that answers at once) and reports
the peak memory of the process and its growth against a run of N / 10 rows.

Usage::

    .venv/bin/python benchmarks/bench_captioning.py                       # 300 COCO photos, 16 in flight
    .venv/bin/python benchmarks/bench_captioning.py --memory-rows 100000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COCO = ROOT.parent / "shared" / "data" / "coco_captions" / "images"
MODEL = "bench-vlm"


def serve(latency: float, port_queue) -> None:
    """The server process: POST /v1/chat/completions answers the prompt after ``latency``; GET /stats."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    stats = {"active": 0, "max_active": 0, "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send(self, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with lock:
                self.send(dict(stats))
                stats.update(max_active=0, requests=0)

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            parts = request["messages"][-1]["content"]
            prompt = " ".join(p["text"] for p in parts if p["type"] == "text")
            with lock:
                stats["active"] += 1
                stats["requests"] += 1
                stats["max_active"] = max(stats["max_active"], stats["active"])
            time.sleep(latency)
            with lock:
                stats["active"] -= 1
            self.send({"choices": [{"index": 0, "message": {"role": "assistant", "content": f"caption: {prompt}"}}]})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

    httpd = Server(("127.0.0.1", 0), Handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def server_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return json.loads(resp.read())


# ------------------------------------------------------------------------------------------ baseline
async def _asyncio_loop(port: int, rows: list[dict], workers: int) -> dict[int, str]:
    todo = iter(range(len(rows)))
    captions: dict[int, str] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in todo:
            row = rows[i]
            url = "data:image/jpeg;base64," + base64.b64encode(Path(row["image"]).read_bytes()).decode()
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": row["prompt"]}]
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answer = json.loads(await reader.readexactly(length))
            captions[i] = answer["choices"][0]["message"]["content"]
        writer.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return captions


def asyncio_loop(port: int, rows: list[dict], workers: int, work: Path) -> list[str | None]:
    captions = asyncio.run(_asyncio_loop(port, rows, workers))
    return [captions.get(i) for i in range(len(rows))]


def caption_operator(port: int, rows: list[dict], workers: int, work: Path) -> list[str | None]:
    from dataflow.operators.core_vision import ImageCaptionGenerator
    from dataflow.serving import APIVLMServing_openai
    from dataflow.utils.storage import FileStorage

    work.mkdir(parents=True)
    src = work / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    serving = APIVLMServing_openai(api_url=f"http://127.0.0.1:{port}/v1", model_name=MODEL, max_workers=workers)
    storage = FileStorage(src, cache_path=work / "cache", file_name_prefix="bench")
    op = ImageCaptionGenerator(serving, system_prompt="")
    op.run(storage.step(), input_modal_key="image", input_prompt_key="prompt", output_key="caption")
    return [None if not isinstance(c, str) else c for c in storage.step().read()["caption"]]


METHODS = {"asyncio_loop": asyncio_loop, "caption_operator": caption_operator}


def check(name: str, got: list[str | None], rows: list[dict]) -> None:
    wrong = [i for i, (c, r) in enumerate(zip(got, rows, strict=True)) if c != f"caption: {r['prompt']}"]
    if wrong:
        raise SystemExit(f"{name}: {len(wrong)} row(s) without their caption, e.g. row {wrong[0]}: {got[wrong[0]]!r}")


def start_server(latency: float) -> tuple[multiprocessing.Process, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=serve, args=(latency, queue), daemon=True)
    server.start()
    return server, queue.get(timeout=30)


def throughput(args, work: Path) -> None:
    images = sorted(COCO.glob("*.jpg"))
    if len(images) < 10:
        raise SystemExit(f"COCO photos not found under {COCO} (see ../shared/data/README.md)")
    rows = [{"image": str(images[i % len(images)]), "prompt": f"row {i}"} for i in range(args.rows)]
    server, port = start_server(args.latency)
    try:
        asyncio_loop(port, rows[:20], 4, work)  # server threads and imports warm
        server_stats(port)
        best: dict[str, float] = {}
        in_flight: dict[str, int] = {}
        for r in range(args.repeat):
            for name, method in METHODS.items():
                started = time.perf_counter()
                got = method(port, rows, args.workers, work / f"{name}_{r}")
                seconds = time.perf_counter() - started
                check(name, got, rows)
                stats = server_stats(port)
                in_flight[name] = max(in_flight.get(name, 0), stats["max_active"])
                best[name] = min(best.get(name, float("inf")), seconds)
                print(f"  run {r + 1} {name:17s} {seconds:6.2f} s  {len(rows) / seconds:7.1f} captions/s")
    finally:
        server.terminate()
    ideal = len(rows) / args.workers * args.latency
    print(f"\n{len(rows)} rows, {args.workers} in flight, server latency {args.latency} s (ideal {ideal:.2f} s)")
    print(f"{'method':17s} {'best s':>7s} {'captions/s':>11s} {'max in flight':>14s}")
    for name in METHODS:
        print(f"{name:17s} {best[name]:7.2f} {len(rows) / best[name]:11.1f} {in_flight[name]:14d}")
    ratio = best["asyncio_loop"] / best["caption_operator"]
    print(f"caption_operator throughput / asyncio_loop: {ratio:.3f}")


def memory(args, work: Path) -> None:
    """Peak RSS of the operator over N rows, in a fresh process each, against N / 10 rows."""
    import subprocess

    from PIL import Image

    image = work / "small.jpg"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(image, quality=85)
    server, port = start_server(0.0)
    try:
        peaks = {}
        for n in (args.memory_rows // 10, args.memory_rows):
            code = (
                "import json, resource, sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
                "from benchmarks.bench_captioning import caption_operator;"
                "n, port, image, work = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]);"
                "rows = [{'image': image, 'prompt': f'row {i}'} for i in range(n)];"
                "t = time.perf_counter(); got = caption_operator(port, rows, 16, work);"
                "assert all(c == f'caption: row {i}' for i, c in enumerate(got)), 'uncaptioned rows';"
                "print(json.dumps({'seconds': time.perf_counter() - t,"
                " 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code, str(ROOT), str(n), str(port), str(image), str(work / f"mem_{n}")],
                capture_output=True,
                text=True,
                env={**os.environ, "DATAFLOW_PROGRESS": "0"},
            )
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {n:7d} rows: {peaks[n]['seconds']:6.1f} s, {n / peaks[n]['seconds']:6.0f} captions/s, "
                f"peak RSS {peaks[n]['peak_mb']:.0f} MB"
            )
    finally:
        server.terminate()
    small, large = peaks[args.memory_rows // 10], peaks[args.memory_rows]
    per_row = (large["peak_mb"] - small["peak_mb"]) * 1024 / (args.memory_rows * 0.9)
    print(f"memory growth: {per_row:.2f} KB per row beyond the first {args.memory_rows // 10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds the server takes per request")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-rows", type=int, default=0, help="also measure memory over this many rows")
    args = parser.parse_args()
    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench_captioning_"))
    try:
        throughput(args, work)
        if args.memory_rows:
            memory(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
