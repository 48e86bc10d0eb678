"""VLM captioning: the servings of ``dataflow.serving`` and the caption generator over them.

``APIVLMServing_openai`` runs against a real chat-completions server on 127.0.0.1 (a port of its own per
test, never the internet) that checks each request (model name, system prompt, the image's data URL) and
counts the requests per prompt, so each test asserts what a case costs: one request for a caption,
``max_retries + 1`` for an always-failing one, none for an unreadable image. The row's prompt picks what the
server does (``ok``, ``flaky``, ``down``, ``slow``...). ``LocalModelVLMServing_transformers`` runs a tiny
LLaVA built here from a config (random weights, a byte-level tokenizer), saved and loaded back from disk;
``LocalModelVLMServing_vllm`` runs against a stand-in ``vllm`` module (vLLM is not installed here). A second
server answers from the tiny LLaVA itself, so captions over HTTP can be checked against the model's own.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import socket
import sys
import threading
import time
import types
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from shared_data import REPO
from test_image_downloader import QuietServer  # the same quiet test server

from dataflow.cli import main
from dataflow.operators.core_vision.generate.image_caption_generator import (
    DEFAULT_SYSTEM_PROMPT,
    ImageCaptionGenerator,
)
from dataflow.serving import (
    APIVLMServing_openai,
    LocalModelVLMServing_transformers,
    LocalModelVLMServing_vllm,
    ServingAuthError,
    ServingConnectionError,
    ServingError,
    VLMServingABC,
    build_serving,
)
from dataflow.storage.manifest import check_accounting, fingerprint
from dataflow.utils.storage import FileStorage

FAST = {"backoff": 0.01, "max_retry_wait": 0.05}  # retries without real waits
MODEL = "test-vlm"
KEY = "sk-test-123"


# ------------------------------------------------------------------------------------------ the server
class Site:
    """What the chat server does and saw: requests per prompt, the images' sizes, most requests at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.requests: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.slow_seconds = 1.0
        self.held_seconds = 0.15
        self.key: str | None = None  # the Bearer key the server wants (None: any or none)
        self.script = None  # (prompt, sizes) -> (behaviour, answer): a test's own completions
        # After this many answers, requests wait (up to 30 s) for `release`: a run to kill mid-step.
        self.answer_limit: int | None = None
        self.answered = 0
        self.release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server does: the client reuses its connections

    def log_message(self, *args):  # quiet
        pass

    def reply(self, status: int, payload, headers: dict | None = None):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        site: Site = self.server.site
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        payload = json.loads(raw)
        if payload.get("model") != MODEL:
            return self.reply(404, {"error": {"message": f"The model `{payload.get('model')}` does not exist."}})
        if site.key is not None and self.headers.get("Authorization") != f"Bearer {site.key}":
            return self.reply(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
        messages = payload["messages"]
        user = messages[-1]["content"]
        parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
        prompt = " ".join(p["text"] for p in parts if p["type"] == "text")
        sizes = []
        for part in parts:
            if part["type"] == "image_url":
                head, data = part["image_url"]["url"].split(",", 1)
                assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
                with Image.open(io.BytesIO(base64.b64decode(data))) as img:
                    sizes.append(f"{img.size[0]}x{img.size[1]}")
        behaviour = prompt.split()[0] if prompt else "ok"
        answer = f" {prompt} | {' '.join(sizes)} "
        if site.script is not None:
            behaviour, answer = site.script(prompt, sizes)
        with site.lock:
            held = site.answer_limit is not None and site.answered >= site.answer_limit
            site.answered += not held
        if held:
            site.release.wait(30)
            return self.reply(503, {"error": {"message": "held past the answer limit"}})
        with site.lock:
            site.counts[prompt] += 1
            count = site.counts[prompt]
            site.requests.append(
                {"payload": payload, "prompt": prompt, "sizes": sizes, "auth": self.headers.get("Authorization")}
            )
            site.active += 1
            site.max_active = max(site.max_active, site.active)
        try:
            if behaviour == "held":
                time.sleep(site.held_seconds)
            elif behaviour == "slow":
                time.sleep(site.slow_seconds)
        finally:
            with site.lock:
                site.active -= 1
        caption = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
        try:
            if behaviour == "flaky" and count == 1:
                self.reply(500, {"error": {"message": "worker crashed"}})
            elif behaviour == "down":
                self.reply(503, {"error": {"message": "server overloaded"}})
            elif behaviour == "limited" and count == 1:
                self.reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            elif behaviour == "toolong":
                self.reply(400, {"error": {"message": "prompt is longer than the context"}})
            elif behaviour == "blank":
                self.reply(
                    200, {"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
                )
            elif behaviour == "garbled":
                self.reply(200, b"<html>proxy error</html>")
            else:
                self.reply(200, caption)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


class Server:
    def __init__(self):
        self.site = Site()
        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.site = self.site
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.api_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def total(self) -> int:
        return sum(self.site.counts.values())


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ data
def write_jpeg(path: Path, size, color=(200, 60, 40), orientation: int | None = None) -> None:
    img = Image.new("RGB", size, color)
    img.paste((20, 20, 220), (0, 0, size[0] // 2, size[1] // 3))  # not flat: a real image to encode
    if orientation is None:
        img.save(path, "JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(path, "JPEG", quality=90, exif=exif.tobytes())


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    write_jpeg(folder / "img" / "wide.jpg", (800, 400))
    Image.new("RGB", (300, 600), (10, 150, 10)).save(folder / "img" / "tall.png")
    write_jpeg(folder / "img" / "sideways.jpg", (120, 60), orientation=6)  # shown upright as 60 x 120
    write_jpeg(folder / "img" / "small.jpg", (64, 48))
    good = (folder / "img" / "small.jpg").read_bytes()
    (folder / "img" / "cut.jpg").write_bytes(good[: len(good) // 2])
    return folder


def table(folder: Path, rows: list[dict], name: str = "rows") -> Path:
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows)))
    return path


def serving(srv: Server, **options) -> APIVLMServing_openai:
    return APIVLMServing_openai(api_url=srv.api_url, model_name=MODEL, **{"max_workers": 4, **FAST, **options})


def values(column: pd.Series) -> list:
    """A column as a list, nulls (NaN once read back) as None."""
    return [None if pd.isna(v) else v for v in column]


def caption_step(src: Path, cache: Path, op: ImageCaptionGenerator, **keys) -> tuple[pd.DataFrame, dict, FileStorage]:
    storage = FileStorage(src, cache_path=cache, file_name_prefix="cap")
    op.run(storage.step(), **keys)
    meta = storage.manifest(1)
    check_accounting("caption", meta["rows_in"], meta["rows_out"], meta["rows_rejected"])
    return storage.step().read("dataframe"), meta, storage


# ------------------------------------------------------------------------------------------ API serving
def test_captions_each_row_with_the_request_the_server_expects(server, images, tmp_path, monkeypatch):
    monkeypatch.setenv("DF_API_KEY", KEY)
    server.site.key = KEY
    src = table(images, [{"image": f"img/{n}"} for n in ("wide.jpg", "tall.png", "sideways.jpg", "small.jpg")])
    op = ImageCaptionGenerator(serving(server, max_side=256, max_tokens=64, temperature=0.0), prompt="ok describe")
    out, meta, _ = caption_step(src, tmp_path / "cache", op, input_modal_key="image", output_key="caption")

    assert meta["rows_in"] == meta["rows_out"] == 4 and meta["rows_rejected"] == 0
    # Relative paths are read against the input's folder; each image is shrunk to fit 256 (aspect kept),
    # upright: the EXIF-rotated 120 x 60 JPEG is sent as 60 x 120; small images keep their size.
    assert out["caption"].tolist() == [
        "ok describe | 256x128",
        "ok describe | 128x256",
        "ok describe | 60x120",
        "ok describe | 64x48",
    ]
    assert out["caption_error"].isna().all() and out["image_error"].isna().all()
    assert server.total == 4
    for seen in server.site.requests:
        body = seen["payload"]
        assert body["model"] == MODEL and body["max_tokens"] == 64 and body["temperature"] == 0.0
        assert body["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
        assert body["messages"][1]["role"] == "user" and len(body["messages"]) == 2
        assert seen["auth"] == f"Bearer {KEY}"
    # The key is read from the environment when requests go out: never in the manifest or the fingerprint.
    text = (tmp_path / "cache").joinpath("cap_step1.meta.json").read_text()
    assert KEY not in text and "APIVLMServing_openai(api_url=" in text


def test_full_size_by_default_and_png_on_request(server, images, tmp_path):
    src = table(images, [{"image": "img/wide.jpg"}])
    out, _, _ = caption_step(src, tmp_path / "c1", ImageCaptionGenerator(serving(server), prompt="ok"))
    assert out["output"].tolist() == ["ok | 800x400"]  # DataFlow-MM's default output column, full size
    op = ImageCaptionGenerator(serving(server, image_format="png", max_side=100), prompt="ok png")
    out, _, _ = caption_step(src, tmp_path / "c2", op)
    assert out["output"].tolist() == ["ok png | 100x50"]
    url = server.site.requests[-1]["payload"]["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


def test_a_500_is_retried_and_the_retry_succeeds(server, images, tmp_path):
    src = table(images, [{"image": "img/small.jpg", "p": "flaky one"}, {"image": "img/small.jpg", "p": "ok two"}])
    op = ImageCaptionGenerator(serving(server, max_retries=2))
    out, meta, _ = caption_step(src, tmp_path / "cache", op, input_prompt_key="p", output_key="caption")
    assert out["caption"].tolist() == ["flaky one | 64x48", "ok two | 64x48"]
    assert server.site.counts == Counter({"flaky one": 2, "ok two": 1})  # one failure, one retry
    assert meta["rows_out"] == 2


def test_a_429_with_retry_after_is_retried(server, images, tmp_path):
    src = table(images, [{"image": "img/small.jpg"}])
    op = ImageCaptionGenerator(serving(server, max_retries=1), prompt="limited")
    out, _, _ = caption_step(src, tmp_path / "cache", op, output_key="caption")
    assert out["caption"].tolist() == ["limited | 64x48"] and server.site.counts["limited"] == 2


def test_an_always_failing_server_costs_bounded_attempts_and_the_row_keeps_the_reason(server, images, tmp_path):
    rows = [{"image": "img/small.jpg", "p": "down a"}, {"image": "img/wide.jpg", "p": "ok b"}]
    src = table(images, rows)
    op = ImageCaptionGenerator(serving(server, max_retries=2))
    out, meta, _ = caption_step(src, tmp_path / "cache", op, input_prompt_key="p", output_key="caption")
    assert meta["rows_in"] == meta["rows_out"] == 2 and meta["rows_rejected"] == 0  # never lost
    assert server.site.counts["down a"] == 3  # max_retries + 1, then it gives up
    first = out.iloc[0]
    assert first["caption"] is None or pd.isna(first["caption"])
    assert first["caption_error"] == "http_5xx"
    detail = first["caption_error_detail"]
    assert "HTTP 503: server overloaded" in detail and "(3 requests)" in detail
    assert pd.isna(first["image_error"])  # the image was fine: the request failed
    assert out.iloc[1]["caption"] == "ok b | 800x400" and pd.isna(out.iloc[1]["caption_error"])


def test_on_error_reject_moves_failed_rows_to_the_rejected_file_with_the_reason(server, images, tmp_path):
    rows = [
        {"image": "img/small.jpg", "p": "down a"},
        {"image": "img/wide.jpg", "p": "ok b"},
        {"image": "img/cut.jpg", "p": "ok c"},
        {"image": "img/gone.jpg", "p": "ok d"},
    ]
    src = table(images, rows)
    op = ImageCaptionGenerator(serving(server, max_retries=1), on_error="reject")
    out, meta, storage = caption_step(src, tmp_path / "cache", op, input_prompt_key="p", output_key="caption")
    assert meta["rows_in"] == 4 and meta["rows_out"] == 1 and meta["rows_rejected"] == 3
    assert meta["rejected_reasons"] == {"http_5xx": 1, "truncated": 1, "missing": 1}
    assert out["caption"].tolist() == ["ok b | 800x400"] and "caption_error" not in out.columns
    rejected = storage.read_rejected(1).set_index("p")
    assert rejected.loc["down a", "reason"] == "http_5xx" and "503" in rejected.loc["down a", "detail"]
    assert server.site.counts == Counter({"down a": 2, "ok b": 1})  # no request for an unreadable image


def test_unreadable_images_get_a_null_caption_and_the_loaders_reason_without_a_request(server, images, tmp_path):
    rows = [{"image": "img/cut.jpg"}, {"image": "img/gone.jpg"}, {"image": None}, {"image": "img/small.jpg"}]
    src = table(images, rows)
    out, meta, _ = caption_step(src, tmp_path / "cache", ImageCaptionGenerator(serving(server), prompt="ok"))
    assert meta["rows_out"] == 4
    assert out["output_error"].tolist()[:3] == ["truncated", "missing", "missing"]
    assert out["image_error"].tolist()[:3] == ["truncated", "missing", "missing"]
    assert out["output"].isna().tolist() == [True, True, True, False]
    assert out["image_error_detail"].notna().tolist() == [True, True, True, False]
    assert server.total == 1


def test_a_request_slower_than_the_timeout_fails_as_timeout_after_its_retries(server, images, tmp_path):
    server.site.slow_seconds = 1.0
    src = table(images, [{"image": "img/small.jpg", "p": "slow x"}, {"image": "img/small.jpg", "p": "ok y"}])
    op = ImageCaptionGenerator(serving(server, timeout=0.3, max_retries=1))
    started = time.monotonic()
    out, meta, _ = caption_step(src, tmp_path / "cache", op, input_prompt_key="p")
    assert time.monotonic() - started < 5
    assert values(out["output_error"]) == ["timeout", None]
    assert out["output_error_detail"].iloc[0] == "no answer within 0.3 s (2 requests)"
    assert server.site.counts["slow x"] == 2 and out["output"].iloc[1] == "ok y | 64x48"


def test_refused_requests_and_odd_answers_fail_their_row_without_retries(server, images, tmp_path):
    rows = [{"image": "img/small.jpg", "p": p} for p in ("toolong a", "blank b", "garbled c")]
    out, _, _ = caption_step(
        table(images, rows), tmp_path / "cache", ImageCaptionGenerator(serving(server)), input_prompt_key="p"
    )
    assert out["output_error"].tolist() == ["http_4xx", "empty_response", "bad_response"]
    assert out["output_error_detail"].iloc[0] == "HTTP 400: prompt is longer than the context"
    assert server.total == 3  # none of them is retried


def test_a_wrong_key_stops_the_run_with_a_message_about_the_key(server, images, tmp_path, monkeypatch):
    server.site.key = KEY
    src = table(images, [{"image": "img/small.jpg"}] * 3)
    monkeypatch.setenv("MY_VLM_KEY", "sk-wrong")
    op = ImageCaptionGenerator(serving(server, key_name_of_api_key="MY_VLM_KEY"), prompt="ok")
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="cap")
    refused = r"HTTP 401: Invalid API key.*MY_VLM_KEY, which is set, but the server refused it"
    with pytest.raises(ServingAuthError, match=refused):
        op.run(storage.step())
    assert not list((tmp_path / "cache").glob("cap_step1.*"))  # nothing half-written
    assert server.total <= 3  # a refused key is never retried
    monkeypatch.delenv("MY_VLM_KEY")
    with pytest.raises(ServingAuthError, match=r"MY_VLM_KEY, which is not set: export MY_VLM_KEY=<your key>"):
        op.run(FileStorage(src, cache_path=tmp_path / "cache2", file_name_prefix="cap").step())


def test_a_wrong_model_name_stops_the_run_naming_it(server, images, tmp_path):
    op = ImageCaptionGenerator(APIVLMServing_openai(api_url=server.api_url, model_name="nope", **FAST))
    with pytest.raises(ServingError, match=r"HTTP 404.*model_name='nope'"):
        op.run(FileStorage(table(images, [{"image": "img/small.jpg"}]), cache_path=tmp_path / "c").step())


def test_no_server_is_one_clear_error_naming_the_url(images, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    op = ImageCaptionGenerator(APIVLMServing_openai(api_url=url, model_name=MODEL, max_retries=1, **FAST))
    storage = FileStorage(table(images, [{"image": "img/small.jpg"}] * 5), cache_path=tmp_path / "cache")
    message = rf"cannot connect to the VLM server at {url} .*refused.*2 attempt"
    with pytest.raises(ServingConnectionError, match=message):
        op.run(storage.step())


def test_requests_in_flight_never_exceed_max_workers(server, images, tmp_path):
    server.site.held_seconds = 0.15
    src = table(images, [{"image": "img/small.jpg", "p": f"held {i}"} for i in range(12)])
    op = ImageCaptionGenerator(serving(server, max_workers=3))
    out, meta, _ = caption_step(src, tmp_path / "cache", op, input_prompt_key="p")
    assert meta["rows_out"] == 12 and out["output"].notna().all()
    assert out["output"].tolist() == [f"held {i} | 64x48" for i in range(12)]  # each answer on its own row
    assert server.site.max_active == 3  # all three used, never a fourth


def test_dataflow_mm_methods_and_import_paths(server, images):
    from dataflow.core import LLMServingABC
    from dataflow.core import VLMServingABC as CoreVLM
    from dataflow.serving.api_vlm_serving_openai import APIVLMServing_openai as ByModule
    from dataflow.serving.local_model_vlm_serving import LocalModelVLMServing_vllm as VllmByModule

    assert ByModule is APIVLMServing_openai and VllmByModule is LocalModelVLMServing_vllm
    assert issubclass(APIVLMServing_openai, CoreVLM) and CoreVLM is VLMServingABC
    assert issubclass(VLMServingABC, LLMServingABC)
    srv = serving(server)
    small = str(images / "img" / "small.jpg")
    got = srv.generate_from_input(["ok a", "down b"], system_prompt="be brief", image_inputs=[[small], small])
    assert got == ["ok a | 64x48", None]  # a failed request is None, never an "Error: ..." caption
    assert all(r["payload"]["messages"][0] == {"role": "system", "content": "be brief"} for r in server.site.requests)
    conversations = [
        [{"from": "human", "value": "<image>ok first"}],
        [
            {"role": "user", "content": "ok q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "ok again"},
        ],
    ]
    got = srv.generate_from_input_messages(conversations, image_list=[[small], None])
    assert got == ["ok first | 64x48", "ok again |"]  # answers are stripped
    last = next(r["payload"]["messages"] for r in server.site.requests if r["prompt"] == "ok again")
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    with pytest.raises(NotImplementedError, match="video"):
        srv.generate_from_input(["x"], video_inputs=[["clip.mp4"]])


def test_a_serving_fingerprints_and_pickles_as_its_configuration(server, images, tmp_path):
    srv = serving(server)
    before = fingerprint(srv)
    caption_step(
        table(images, [{"image": "img/small.jpg"}]), tmp_path / "cache", ImageCaptionGenerator(srv, prompt="ok")
    )
    assert fingerprint(srv) == before  # what it built while running is not part of it
    again = pickle.loads(pickle.dumps(ImageCaptionGenerator(srv)))
    assert repr(again.serving) == repr(srv)
    assert fingerprint(serving(server, max_side=512)) != before


def test_build_serving_from_a_config_mapping():
    built = build_serving({"serving": "APIVLMServing_openai", "api_url": "http://127.0.0.1:8000/v1", "model_name": "m"})
    assert isinstance(built, APIVLMServing_openai) and built.model_name == "m"
    with pytest.raises(ValueError, match="did you mean 'APIVLMServing_openai'"):
        build_serving({"serving": "APIVLMServing_opena"})
    with pytest.raises(TypeError, match="serving APIVLMServing_openai: .*api_ur"):
        build_serving({"serving": "APIVLMServing_openai", "api_ur": "x"})
    for bad in (
        {"api_url": "ftp://x/v1"},
        {"max_workers": 0},
        {"timeout": 0},
        {"max_side": 0},
        {"image_format": "gif"},
    ):
        with pytest.raises(ValueError):
            APIVLMServing_openai(**{"model_name": "m", **bad})
    with pytest.raises(ValueError, match="on_error"):
        ImageCaptionGenerator(built, on_error="drop")


def localised_config(tmp_path: Path, api_url: str) -> Path:
    """configs/vlm_captions.yaml with api_url pointing at the test server, in a folder beside example_data."""
    text = (REPO / "configs" / "vlm_captions.yaml").read_text()
    assert "api_url: http://127.0.0.1:8000/v1" in text and "../example_data/images.jsonl" in text
    (tmp_path / "configs").mkdir()
    (tmp_path / "example_data").symlink_to(REPO / "example_data", target_is_directory=True)
    path = tmp_path / "configs" / "vlm_captions.yaml"
    text = text.replace("http://127.0.0.1:8000/v1", api_url).replace("timeout: 300", "timeout: 10")
    text = text.replace("model_name: Qwen/Qwen2.5-VL-7B-Instruct", f"model_name: {MODEL}")
    path.write_text(text.replace("model_name: Qwen/Qwen2.5-VL-7B-Instruct", f"model_name: {MODEL}"))
    return path


def test_dataflow_run_of_the_shipped_config(server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = localised_config(tmp_path, server.api_url)
    assert main(["run", str(config), "--check"]) == 0
    assert main(["run", str(config)]) == 0
    cache = tmp_path / "cache_vlm_captions"
    meta = json.loads((cache / "vlm_captions_step1.meta.json").read_text())
    rows = [json.loads(line) for line in (REPO / "example_data" / "images.jsonl").read_text().splitlines()]
    assert meta["rows_in"] == meta["rows_out"] == len(rows) and meta["rows_rejected"] == 0
    out = pd.read_json(cache / "vlm_captions_step1.jsonl", lines=True)
    by_image = out.set_index("image")
    assert by_image.loc["images/truncated.jpg", "vlm_caption_error"] == "truncated"
    assert by_image.loc["images/missing.jpg", "vlm_caption_error"] == "missing"
    good = out[out["vlm_caption_error"].isna()]
    assert len(good) == len(rows) - 2 and good["vlm_caption"].str.startswith("Describe this image").all()
    captioned = [r for r in server.site.requests if r["sizes"]]
    assert all(max(int(v) for v in r["sizes"][0].split("x")) <= 1024 for r in captioned)
    assert len(captioned) == len(rows) - 2
    # Step 2 rewrites each human caption (text only) beside the original.
    rewritten = pd.read_json(cache / "vlm_captions_step2.jsonl", lines=True)
    assert (
        rewritten["rich_caption"]
        == "Rewrite this image caption as one vivid, specific sentence: " + rewritten["caption"] + " |"
    ).all()
    assert server.total == 2 * len(rows) - 2
    assert main(["run", str(config)]) == 0  # resumes: the cached steps are not asked again
    assert server.total == 2 * len(rows) - 2


# ------------------------------------------------------------------------------------------ transformers
def _byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"), vocab


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    """A tiny LLaVA (CLIP vision tower, Llama text model, random weights) saved with its processor."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch

    tokenizer, vocab = _byte_tokenizer()
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    text = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<image>"],
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llava")
    transformers.LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def local_serving(folder: Path, **options) -> LocalModelVLMServing_transformers:
    options = {
        "batch_size": 2,
        "max_new_tokens": 4,
        "device": "cpu",
        "generation_kwargs": {"min_new_tokens": 4},
        **options,
    }
    return LocalModelVLMServing_transformers(folder, **options)


def test_local_transformers_serving_captions_in_batches(tiny_vlm, images, tmp_path):
    srv = local_serving(tiny_vlm)
    rows = [{"image": f"img/{n}"} for n in ("wide.jpg", "tall.png", "gone.jpg", "sideways.jpg", "small.jpg")]
    src = table(images, rows)
    op = ImageCaptionGenerator(srv)
    calls = []
    srv._load()
    model = srv.runtime["model"]
    generate = model.generate

    def counting(**inputs):
        calls.append(int(inputs["input_ids"].shape[0]))
        return generate(**inputs)

    model.generate = counting
    out, meta, _ = caption_step(src, tmp_path / "cache", op, output_key="caption")
    assert meta["rows_in"] == meta["rows_out"] == 5
    assert calls == [2, 2]  # full batches of two; the unreadable image's row never reaches the model
    assert values(out["caption_error"]) == [None, None, "missing", None, None]
    good = out["caption"].drop(index=2)
    assert all(isinstance(c, str) and c for c in good)
    # The same requests one at a time give the same captions: left padding and the attention mask hold.
    one = local_serving(tiny_vlm, batch_size=1)
    base = str(images)
    single = one.generate_results(
        ["Please describe the image in detail."] * 4,
        [[f"img/{n}"] for n in ("wide.jpg", "tall.png", "sideways.jpg", "small.jpg")],
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        base_dir=base,
    )
    assert [r.text for r in single] == good.tolist()
    assert fingerprint(srv) == fingerprint(local_serving(tiny_vlm))  # the loaded model is not configuration
    srv.cleanup()
    assert "model" not in srv.runtime


def test_a_failing_batch_is_run_again_one_request_at_a_time(tiny_vlm, images):
    srv = local_serving(tiny_vlm, batch_size=3)
    srv._load()
    model = srv.runtime["model"]
    generate = model.generate

    def refuses_batches(**inputs):
        if inputs["input_ids"].shape[0] > 1:
            raise RuntimeError("CUDA out of memory (pretend)")
        if inputs["pixel_values"].shape[-1] == 16 and inputs["input_ids"].shape[1] > 120:
            raise RuntimeError("prompt too long (pretend)")
        return generate(**inputs)

    model.generate = refuses_batches
    small = str(images / "img" / "small.jpg")
    results = srv.generate_results(["short", "x" * 200, "short again"], [small] * 3)
    assert [r.reason for r in results] == [None, "generation_failed", None]
    assert "prompt too long" in results[1].detail


def test_a_local_model_not_on_disk_is_found_by_check_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    from dataflow.models.clip import ModelNotFoundError

    op = ImageCaptionGenerator(LocalModelVLMServing_transformers("Qwen/Qwen2.5-VL-3B-Instruct"))
    problems = op.missing_models()
    assert len(problems) == 1 and "was not found on local disk" in problems[0] and "hf download" in problems[0]
    src = table(tmp_path, [{"image": "a.jpg"}])
    with pytest.raises(ModelNotFoundError, match="Qwen/Qwen2.5-VL-3B-Instruct"):
        op.run(FileStorage(src, cache_path=tmp_path / "cache").step())
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    assert "no config.json" in LocalModelVLMServing_transformers(folder).missing_models()[0]


def test_a_local_serving_in_a_config_is_checked_by_dataflow_run_check(tiny_vlm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    shutil.copytree(tiny_vlm, tmp_path / "model")
    (tmp_path / "in.jsonl").write_text('{"image": "a.jpg"}\n')
    config = tmp_path / "c.yaml"
    step = "params: {llm_serving: {serving: LocalModelVLMServing_transformers, hf_model_name_or_path: %s}}"
    body = (
        "storage: {first_entry_file_name: in.jsonl, cache_path: ./cache}\n"
        "steps:\n  - operator: ImageCaptionGenerator\n    "
    )
    config.write_text(body + step % (tmp_path / "model") + "\n")
    assert main(["run", str(config), "--check"]) == 0
    config.write_text(body + step % (tmp_path / "nowhere") + "\n")
    assert main(["run", str(config), "--check"]) == 2
    assert "was not found on local disk" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ vLLM
def test_vllm_serving_drives_the_offline_engine(tiny_vlm, images, monkeypatch):
    seen: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            seen["sampling"] = kwargs

    class LLM:
        def __init__(self, **kwargs):
            seen["llm"] = kwargs

        def chat(self, messages, sampling_params, use_tqdm=False):
            seen.setdefault("chats", []).append(messages)
            out = []
            for conversation in messages:
                text = conversation[-1]["content"][-1]["text"]
                out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" vllm: {text} ")]))
            return out

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    srv = LocalModelVLMServing_vllm(hf_model_name_or_path=str(tiny_vlm), vllm_max_tokens=77, max_side=32)
    small = str(images / "img" / "small.jpg")
    got = srv.generate_from_input(["one", "two"], system_prompt="sys", image_inputs=[[small], [small]])
    assert got == ["vllm: one", "vllm: two"]
    assert seen["llm"]["model"] == str(tiny_vlm) and seen["sampling"]["max_tokens"] == 77
    conversation = seen["chats"][0][0]
    assert conversation[0] == {"role": "system", "content": "sys"}
    url = conversation[1]["content"][0]["image_url"]["url"]
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        assert img.size == (32, 24)


def test_a_jpeg_needing_no_change_goes_as_its_own_bytes_and_others_are_reencoded(images):
    from dataflow.media import ImageLoadError
    from dataflow.serving.base import image_data_url

    def sent(name: str, **options) -> bytes:
        url = image_data_url(f"img/{name}", images, options.get("max_side"), None, options.get("fmt", "jpeg"))
        return base64.b64decode(url.split(",", 1)[1])

    original = (images / "img" / "wide.jpg").read_bytes()
    assert sent("wide.jpg") == original  # as it is: no second compression
    assert sent("wide.jpg", max_side=400) != original  # shrunk
    with Image.open(io.BytesIO(sent("wide.jpg", max_side=400))) as img:
        assert img.size == (400, 200)
    with Image.open(io.BytesIO(sent("sideways.jpg"))) as img:  # turned upright, so re-encoded
        assert img.size == (60, 120)
    assert sent("wide.jpg", fmt="png")[:4] == b"\x89PNG"
    with pytest.raises(ImageLoadError) as err:  # checked whole before it is sent as it is
        sent("cut.jpg")
    assert err.value.reason == "truncated"


class ModelHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server whose answers come from a real (tiny) model: each request's images
    and text go to a ``LocalModelVLMServing_transformers``, as vLLM's server hands them to its engine."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        system, turns, images = None, [], []
        for message in payload["messages"]:
            content = message["content"]
            if message["role"] == "system":
                system = content
                continue
            parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
            for part in parts:
                if part["type"] == "image_url":
                    images.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
            text = " ".join(p["text"] for p in parts if p["type"] == "text")
            turns.append({"role": message["role"], "content": text})
        [result] = self.server.model.generate_results([turns], [images], system_prompt=system)
        body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}}]})
        self.send_response(200 if result.ok else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


def test_an_openai_compatible_server_answering_from_a_tiny_model_gives_the_models_captions(tiny_vlm, images, tmp_path):
    httpd = QuietServer(("127.0.0.1", 0), ModelHandler)
    httpd.model = local_serving(tiny_vlm, batch_size=1)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        rows = [{"image": "img/wide.jpg"}, {"image": "img/small.jpg"}]  # upright JPEGs: sent as their own bytes
        src = table(images, rows)
        api = APIVLMServing_openai(api_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", model_name=MODEL, **FAST)
        over_http, _, _ = caption_step(src, tmp_path / "http", ImageCaptionGenerator(api))
        in_process, _, _ = caption_step(src, tmp_path / "local", ImageCaptionGenerator(local_serving(tiny_vlm)))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert over_http["output"].notna().all()
    assert list(over_http["output"]) == list(in_process["output"])  # the same model, the same pixels
