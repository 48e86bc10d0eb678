"""First-use downloads: a Hub id not on disk is fetched into the HF cache, unless downloads are off.

The Hub here is a server this test starts on 127.0.0.1 (``HF_ENDPOINT``), serving a tiny CLIP's files with
the endpoints huggingface_hub's ``snapshot_download`` calls: the repo's revision, its file tree, and each
file's ``resolve`` URL (HEAD for the metadata, GET for the bytes). Nothing else is reached.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")
import huggingface_hub.constants

from dataflow.models.clip import load_clip
from dataflow.models.hub import ModelNotFoundError, model_problem, resolve_model_dir
from dataflow.models.locate import model_problem as locate_problem

REPO = "tiny-org/tiny-clip"
SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """The files of one repo, served as the Hub serves them; ``gets`` lists the files downloaded."""

    def __init__(self, folder: Path, extra: dict[str, bytes]):
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.files.update(extra)
        self.gets: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send(self, status: int, body: bytes, headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def route(self, head: bool):
                path = unquote(urlparse(self.path).path)
                if path == f"/api/models/{REPO}/revision/main":
                    info = {"id": REPO, "sha": SHA, "siblings": [{"rfilename": f} for f in hub.files]}
                    return self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                if path.startswith(f"/api/models/{REPO}/tree/"):
                    tree = [
                        {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for f, b in hub.files.items()
                    ]
                    return self.send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                for rev in ("main", SHA):
                    prefix = f"/{REPO}/resolve/{rev}/"
                    if path.startswith(prefix) and path[len(prefix) :] in hub.files:
                        name = path[len(prefix) :]
                        body = hub.files[name]
                        if not head:
                            hub.gets.append(name)
                        etag = f'"{hashlib.sha1(body).hexdigest()}"'
                        return self.send(200, body, {"X-Repo-Commit": SHA, "ETag": etag}, head=head)
                self.send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head=head)

            def do_GET(self):
                self.route(head=False)

            def do_HEAD(self):
                self.route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tiny_clip_dir, tmp_path, monkeypatch):
    # Files from_pretrained never reads, to check only model files are fetched (and never code).
    extra = {"pytorch_model.bin": b"not fetched when safetensors exist", "modeling_evil.py": b"raise SystemExit"}
    server = FakeHub(tiny_clip_dir, extra)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (tests/conftest.py set it): undo that copy too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield server
    server.stop()


def test_a_hub_id_downloads_on_first_use_and_loads(hub, tiny_clip_dir, tmp_path):
    assert model_problem(REPO, "CLIP model") is None  # --check: it will be fetched
    clip = load_clip(REPO, device="cpu")
    fetched = set(hub.gets)
    assert "config.json" in fetched and "model.safetensors" in fetched
    assert "pytorch_model.bin" not in fetched and "modeling_evil.py" not in fetched
    assert str(tmp_path / "hf-cache") in str(resolve_model_dir(REPO))
    direct = load_clip(tiny_clip_dir, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    np.testing.assert_allclose(clip.encode_images([image]), direct.encode_images([image]), atol=1e-6)
    # Second use: from the cache, no request for the bytes again.
    before = len(hub.gets)
    load_clip(REPO, device="cpu")
    assert len(hub.gets) == before


def test_offline_never_asks_the_hub_and_says_how_to_get_the_model(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_clip(REPO, device="cpu")
    text = str(err.value)
    assert "was not found on local disk" in text and "downloads are off" in text and f"hf download {REPO}" in text
    assert hub.gets == []
    assert "downloads are off" in locate_problem("clip", REPO)


def test_local_files_only_wins_over_an_online_environment(hub):
    with pytest.raises(ModelNotFoundError, match="downloads are off"):
        resolve_model_dir(REPO, "CLIP model", local_files_only=True)
    assert hub.gets == []


def test_an_unknown_repo_is_one_clear_error_with_the_hubs_answer(hub):
    with pytest.raises(ModelNotFoundError) as err:
        load_clip("tiny-org/no-such-model", device="cpu")
    text = str(err.value)
    assert "could not be downloaded" in text and "tiny-org/no-such-model" in text and "hf download" in text
