"""ImageDownloader against a real HTTP server on 127.0.0.1 (a port of its own per test, never the internet).

The server counts the requests to every path, so each test asserts how many requests a case costs: one for
an image, ``retries + 1`` for an always-failing one, none for an invalid URL or a file already downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from shared_data import REPO, SHARED_DATA

from dataflow.cli import main
from dataflow.media.http_fetch import FetchOptions, check_url, fetch_all, retry_after, url_hint
from dataflow.operators.core_vision import ImageDownloader
from dataflow.storage.manifest import check_accounting
from dataflow.utils.storage import FileStorage

FAST = {"backoff": 0.01, "max_retry_wait": 0.05}  # retries without real waits


def jpeg(size=(64, 48), color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_rgba(size=(300, 200)) -> bytes:
    img = Image.new("RGBA", size, (10, 200, 10, 255))
    img.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))  # left half transparent
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class Site:
    """What the test server serves, and what it saw: requests per path, most requests at once on /held."""

    def __init__(self, images: dict[str, bytes]):
        self.images = images
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.slow_seconds = 1.0
        self.big = b"\xff\xd8\xff" + b"\0" * 400_000  # over the tests' max_bytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do: the client reuses its connections

    def log_message(self, *args):  # quiet
        pass

    def send_body(self, status: int, body: bytes, ctype: str = "image/jpeg", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302):
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # one route per case
        site: Site = self.server.site
        path = self.path.split("?")[0]
        with site.lock:
            site.counts[path] += 1
            count = site.counts[path]
        first = path.split("/")[1]
        name = path.rsplit("/", 1)[-1]
        try:
            if first == "img" and name in site.images:
                self.send_body(200, site.images[name])
            elif first == "flaky":  # 500 once, then the image
                self.send_body(500, b"oops", "text/plain") if count == 1 else self.send_body(200, site.images["a.jpg"])
            elif first == "always500":
                self.send_body(503, b"down", "text/plain")
            elif first == "teapot":
                self.send_body(418, b"no", "text/plain")
            elif first == "ratelimited":  # 429 once, with Retry-After: 0
                if count == 1:
                    self.send_body(429, b"slow down", "text/plain", {"Retry-After": "0"})
                else:
                    self.send_body(200, site.images["a.jpg"])
            elif first == "slow":
                time.sleep(site.slow_seconds)
                self.send_body(200, site.images["a.jpg"])
            elif first == "chain":  # /chain/3 -> /chain/2 -> /chain/1 -> /chain/0 -> /img/b.jpg
                n = int(name)
                self.redirect(f"/chain/{n - 1}" if n else "/img/b.jpg", 301 if n % 2 else 302)
            elif first == "loop":
                self.redirect("/loop/b" if name == "a" else "/loop/a")
            elif first == "tofile":
                self.redirect("file:///etc/passwd")
            elif first == "big":  # a Content-Length over the limit: refused before the body
                self.send_body(200, site.big)
            elif first == "bignolen":  # no Content-Length: the body just goes on until the connection closes
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for start in range(0, len(site.big), 16384):
                    self.wfile.write(site.big[start : start + 16384])
            elif first == "html":
                self.send_body(200, b"<!doctype html><html><body>Not found, but 200</body></html>", "text/html")
            elif first == "empty":
                self.send_body(200, b"")
            elif first == "cut":  # half a JPEG, served whole: the body is complete, the image is not
                self.send_body(200, site.images["a.jpg"][: len(site.images["a.jpg"]) // 2])
            elif first == "held":  # counts how many requests are in the handler at once
                with site.lock:
                    site.active += 1
                    site.max_active = max(site.max_active, site.active)
                time.sleep(0.1)
                with site.lock:
                    site.active -= 1
                self.send_body(200, site.images["a.jpg"])
            else:
                self.send_body(404, b"not here", "text/plain")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):  # a client closing its keep-alive connection
        pass


class Server:
    def __init__(self, images: dict[str, bytes]):
        self.site = Site(images)
        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.site = self.site
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def total(self) -> int:
        return sum(self.site.counts.values())


@pytest.fixture
def images() -> dict[str, bytes]:
    return {
        "a.jpg": jpeg((64, 48), (200, 40, 40)),
        "b.jpg": jpeg((80, 60), (40, 200, 40)),
        "c.jpg": jpeg((90, 70), (40, 40, 200)),
        "big.png": png_rgba(),
        "photo.jpg": jpeg((400, 300), (120, 120, 30)),
    }


@pytest.fixture
def server(images):
    srv = Server(images)
    yield srv
    srv.stop()


def url_table(tmp_path: Path, urls: list, name: str = "urls", **extra) -> Path:
    path = tmp_path / f"{name}.jsonl"
    rows = [{"id": i, "url": u, **{k: v[i] for k, v in extra.items()}} for i, u in enumerate(urls)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_step(src: Path, cache: Path, op: ImageDownloader, **keys) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    storage = FileStorage(src, cache_path=cache, file_name_prefix="dl")
    op.run(storage.step(), **keys)
    meta = storage.manifest(1)
    check_accounting("ImageDownloader", meta["rows_in"], meta["rows_out"], meta["rows_rejected"])
    return storage.step().read(), storage.read_rejected(1), meta


def by_id(rejected: pd.DataFrame) -> dict[int, str]:
    return dict(zip(rejected["id"], rejected["reason"]))


# ------------------------------------------------------------------------------------------ every case
def test_every_case_is_kept_or_rejected_with_its_reason_and_a_bounded_number_of_requests(tmp_path, server, images):
    photo = SHARED_DATA / "coco_captions" / "images" / "000000000139.jpg"  # a real camera JPEG when there
    coco = photo.read_bytes() if photo.is_file() else jpeg((320, 240), (90, 90, 90))
    images["coco.jpg"] = coco
    cases = {
        "/img/a.jpg": None,
        "/img/coco.jpg": None,
        "/chain/3": None,  # four redirects, then an image
        "/flaky/1": None,  # 500, then 200 on the retry
        "/ratelimited/1": None,  # 429 with Retry-After: 0, then 200
        "/missing.jpg": "http_404",
        "/always500/1": "http_5xx",
        "/teapot/1": "http_4xx",
        "/loop/a": "redirect_loop",
        "/tofile/1": "invalid_url",
        "/big/1": "too_large",
        "/bignolen/1": "too_large",
        "/html/1": "not_an_image",
        "/empty/1": "not_an_image",
        "/cut/1": "not_an_image",
    }
    urls = [server.url(p) for p in cases]
    urls += ["http://no-such-host.invalid/a.jpg", "", None, "ftp://127.0.0.1/a.jpg", "file:///etc/passwd"]
    expected = [*cases.values(), "dns", "invalid_url", "invalid_url", "invalid_url", "invalid_url"]
    op = ImageDownloader(max_bytes=300_000, retries=2, timeout=5, **FAST)
    out, rejected, meta = run_step(url_table(tmp_path, urls), tmp_path / "cache", op)

    assert meta["rows_in"] == len(urls) and meta["rows_out"] == 5
    assert by_id(rejected) == {i: r for i, r in enumerate(expected) if r is not None}
    assert rejected["detail"].map(lambda d: isinstance(d, str) and len(d) > 0).all()
    status = dict(zip(rejected["id"], rejected["http_status"]))
    assert status[5] == 404 and status[6] == 503 and status[7] == 418 and status[15] is None
    detail = dict(zip(rejected["id"], rejected["detail"]))
    assert "418" in detail[7] and "text/html" in detail[12] and "Content-Length" in detail[10]
    assert detail[14].startswith("truncated:")

    # the bytes on disk are the bytes served, under downloads/<2 hex>/<sha1 of the URL>.jpg
    root = (tmp_path / "cache" / "downloads").resolve()
    served = {0: images["a.jpg"], 1: coco, 2: images["b.jpg"], 3: images["a.jpg"], 4: images["a.jpg"]}
    for row in out.itertuples():
        path = Path(row.image)
        digest = hashlib.sha1(row.url.encode()).hexdigest()
        assert path.is_absolute() and path == root / digest[:2] / f"{digest}.jpg"
        assert path.read_bytes() == served[row.id] and row.download_bytes == len(served[row.id])
    assert not list(root.rglob(".*.tmp"))

    counts = server.site.counts
    assert counts["/img/a.jpg"] == 1 and counts["/img/coco.jpg"] == 1
    assert [counts[f"/chain/{n}"] for n in (3, 2, 1, 0)] == [1, 1, 1, 1] and counts["/img/b.jpg"] == 1
    assert counts["/flaky/1"] == 2 and counts["/ratelimited/1"] == 2
    assert counts["/always500/1"] == 3  # retries + 1
    assert counts["/missing.jpg"] == 1 and counts["/teapot/1"] == 1  # a 404 / 418 is not retried
    assert counts["/loop/a"] == 1 and counts["/loop/b"] == 1
    assert counts["/big/1"] == 1 and counts["/bignolen/1"] == 1 and counts["/html/1"] == 1
    assert "/etc/passwd" not in counts and counts["/tofile/1"] == 1 and server.total == 24


def test_a_slow_server_times_out_after_its_retries(tmp_path, server):
    op = ImageDownloader(timeout=0.3, retries=1, **FAST)
    started = time.perf_counter()
    out, rejected, _ = run_step(url_table(tmp_path, [server.url("/slow/1")]), tmp_path / "cache", op)
    assert time.perf_counter() - started < 5
    assert len(out) == 0 and rejected["reason"].tolist() == ["timeout"]
    assert "0.3" in rejected["detail"][0] and "2 requests" in rejected["detail"][0]
    assert server.site.counts["/slow/1"] == 2


def test_an_https_server_with_a_certificate_nobody_signed_is_refused(tmp_path, images):
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True,
        capture_output=True,
    )
    srv = Server(images)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv.httpd.socket = context.wrap_socket(srv.httpd.socket, server_side=True)
    try:
        url = srv.url("/img/a.jpg").replace("http://", "https://")
        _, rejected, _ = run_step(url_table(tmp_path, [url]), tmp_path / "cache", ImageDownloader(timeout=5, **FAST))
    finally:
        srv.stop()
    assert rejected["reason"].tolist() == ["connection"] and "certificate" in rejected["detail"][0]
    assert srv.total == 0  # refused during the handshake: no request was sent


def test_no_retry_when_retries_is_zero(tmp_path, server):
    op = ImageDownloader(retries=0, **FAST)
    _, rejected, _ = run_step(url_table(tmp_path, [server.url("/flaky/1")]), tmp_path / "cache", op)
    assert rejected["reason"].tolist() == ["http_5xx"] and server.site.counts["/flaky/1"] == 1


def test_too_many_redirects_is_a_redirect_loop(tmp_path, server):
    op = ImageDownloader(max_redirects=2, **FAST)
    _, rejected, _ = run_step(url_table(tmp_path, [server.url("/chain/3")]), tmp_path / "cache", op)
    assert rejected["reason"].tolist() == ["redirect_loop"] and "more than 2 redirects" in rejected["detail"][0]
    assert server.total == 3  # the first request and two redirects, no fourth


def test_dns_failure_is_fast_and_offline(tmp_path):
    started = time.perf_counter()
    op = ImageDownloader(timeout=2, **FAST)
    urls = ["http://a.invalid/x.jpg", "https://b.example.invalid/y.png"]
    _, rejected, _ = run_step(url_table(tmp_path, urls), tmp_path / "cache", op)
    assert rejected["reason"].tolist() == ["dns", "dns"]
    assert time.perf_counter() - started < 10


def test_invalid_urls_send_no_request(tmp_path, server):
    urls = [
        "",
        None,
        "   ",
        "ftp://127.0.0.1/a.jpg",
        "file:///etc/passwd",
        "http://",
        "no scheme.jpg",
        12,
        "http://x:99999/",
    ]
    _, rejected, meta = run_step(url_table(tmp_path, urls), tmp_path / "cache", ImageDownloader(**FAST))
    assert meta["rows_out"] == 0 and set(rejected["reason"]) == {"invalid_url"}
    assert server.total == 0
    detail = dict(zip(rejected["id"], rejected["detail"]))
    assert "file://" in detail[4] and "only http:// and https://" in detail[4] and "null" in detail[1]


def test_a_url_repeated_in_several_rows_is_fetched_once(tmp_path, server):
    url = server.url("/img/a.jpg")
    out, rejected, _ = run_step(url_table(tmp_path, [url, url, " " + url]), tmp_path / "cache", ImageDownloader())
    assert len(out) == 3 and len(rejected) == 0 and out["image"].nunique() == 1
    assert server.site.counts["/img/a.jpg"] == 1


def test_spaces_in_urls_are_sent_percent_encoded():
    assert check_url("http://h/a b/ü.jpg?q=x y#frag") == ("http://h/a%20b/%C3%BC.jpg?q=x%20y", None)
    assert check_url("HTTPS://Host:8443/a%20b.jpg")[0] == "https://Host:8443/a%20b.jpg"
    assert check_url("file:///etc/passwd")[0] is None and check_url(float("nan"))[0] is None


# ------------------------------------------------------------------------------------------ resume
def test_a_rerun_reuses_every_file_without_a_request(tmp_path, server):
    urls = [server.url(f"/img/{n}") for n in ("a.jpg", "b.jpg", "c.jpg", "big.png")]
    src = url_table(tmp_path, urls)
    first, _, _ = run_step(src, tmp_path / "cache", ImageDownloader())
    assert server.total == 4 and len(first) == 4
    assert Path(first["image"][3]).suffix == ".png"  # the extension comes from the bytes
    server.stop()  # from here any fetch would fail
    again, rejected, meta = run_step(src, tmp_path / "cache", ImageDownloader())
    pd.testing.assert_frame_equal(again, first)
    assert len(rejected) == 0 and meta["rows_out"] == 4


def test_a_partial_download_resumes_with_only_the_missing_file(tmp_path, server):
    urls = [server.url(f"/img/{n}") for n in ("a.jpg", "b.jpg", "c.jpg")]
    src = url_table(tmp_path, urls)
    shared_dir = tmp_path / "downloads_shared"
    first, _, _ = run_step(src, tmp_path / "cache1", ImageDownloader(download_dir=shared_dir))
    Path(first["image"][1]).unlink()
    (Path(first["image"][2]).parent / ".left-by-a-killed-run.tmp").write_bytes(b"half")
    assert server.total == 3
    # a fresh storage (another cache folder) that downloads to the same folder
    again, _, _ = run_step(src, tmp_path / "cache2", ImageDownloader(download_dir=shared_dir))
    assert server.total == 4 and server.site.counts["/img/b.jpg"] == 2
    pd.testing.assert_frame_equal(again, first)


def test_a_zeroed_file_is_fetched_again(tmp_path, server):
    src = url_table(tmp_path, [server.url("/img/a.jpg")])
    first, _, _ = run_step(src, tmp_path / "cache", ImageDownloader())
    Path(first["image"][0]).write_bytes(b"\0" * 100)  # what a power cut can leave of an unsynced write
    again, _, _ = run_step(src, tmp_path / "cache", ImageDownloader())
    assert server.total == 2 and Path(again["image"][0]).read_bytes()[:3] == b"\xff\xd8\xff"


# ------------------------------------------------------------------------------------------ limits
def test_the_per_host_limit_holds(tmp_path, server):
    urls = [server.url(f"/held/{i}") for i in range(12)]
    out, _, _ = run_step(url_table(tmp_path, urls), tmp_path / "cache", ImageDownloader(max_workers=8, max_per_host=3))
    assert len(out) == 12 and server.site.counts.total() == 12
    assert 1 < server.site.max_active <= 3


def test_fetch_all_keeps_its_in_flight_requests_within_max_workers(server):
    urls = [server.url(f"/held/{i}") for i in range(10)]
    results = fetch_all(urls, lambda i, body, ct: len(body), FetchOptions(max_workers=2, max_per_host=10))
    assert [r.value for r in results] == [len(server.site.images["a.jpg"])] * 10
    assert 1 <= server.site.max_active <= 2


def test_resize_keeps_the_format_and_small_images_untouched(tmp_path, server, images):
    urls = [server.url("/img/photo.jpg"), server.url("/img/big.png"), server.url("/img/a.jpg")]
    out, _, _ = run_step(url_table(tmp_path, urls), tmp_path / "cache", ImageDownloader(resize_max_side=128))
    paths = [Path(p) for p in out["image"]]
    assert all(p.parent.parent.name == "max128" for p in paths)
    with Image.open(paths[0]) as im:
        assert im.format == "JPEG" and im.size == (128, 96)
    with Image.open(paths[1]) as im:
        assert im.format == "PNG" and im.size == (128, 85) and im.mode == "RGBA"
        assert im.getpixel((5, 40))[3] == 0 and im.getpixel((120, 40))[3] == 255
    assert paths[2].read_bytes() == images["a.jpg"]  # 64 x 48: already small, original bytes
    assert out["download_bytes"].tolist() == [p.stat().st_size for p in paths]


def test_a_failure_to_store_a_body_ends_the_run_instead_of_rejecting_rows(server):
    def full_disk(index, body, content_type):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        fetch_all([server.url("/img/a.jpg"), server.url("/img/b.jpg")], full_disk, FetchOptions(max_workers=1))


def test_retry_after_reads_seconds_and_dates():
    from email.utils import formatdate

    assert retry_after("0") == 0 and retry_after("120") == 120 and retry_after(None) is None
    assert retry_after("soon") is None
    assert 50 < retry_after(formatdate(time.time() + 60, usegmt=True)) <= 61


def test_bad_parameters_fail_when_the_operator_is_built():
    for bad in ({"max_workers": 0}, {"max_per_host": -1}, {"timeout": 0}, {"retries": -1}, {"resize_max_side": 0}):
        with pytest.raises(ValueError):
            ImageDownloader(**bad)


def test_missing_url_column_names_it(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"link": "http://x/a.jpg"}\n')
    with pytest.raises(KeyError, match="input_url_key='url' is not a column"):
        ImageDownloader().run(FileStorage(src, cache_path=tmp_path / "c").step())


# ------------------------------------------------------------------------------------------ hint and config
def test_every_reason_is_documented():
    from dataflow.media.http_fetch import REASONS
    from dataflow.operators.core_vision.generate.image_downloader import REASON_MEANINGS

    assert set(REASON_MEANINGS) == set(REASONS)
    assert "## Rejected reasons" in ImageDownloader.doc_sections()


def test_url_hint_names_the_downloader_for_a_column_of_urls():
    hint = url_hint(["http://x/a.jpg", "https://y/b.png", None])
    assert hint and hint.startswith("column holds URLs (http://x/a.jpg") and "add ImageDownloader before" in hint
    assert url_hint(["a.jpg", "b/c.png", "http://x/a.jpg"]) is None
    assert url_hint([None, float("nan")]) is None


def test_the_download_config_runs_against_a_local_server(tmp_path, server, monkeypatch):
    names = ["a.jpg", "b.jpg", "c.jpg", "photo.jpg"]
    csv_path = tmp_path / "urls.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        for n in names:
            writer.writerow([server.url(f"/img/{n}"), f"picture {n}"])
        writer.writerow([server.url("/missing.jpg"), "gone"])
    text = (REPO / "configs" / "download_profiling.yaml").read_text()
    assert "../example_data/urls.csv" in text
    text = text.replace("../example_data/urls.csv", str(csv_path)).replace(
        "cache_path: ../", f"cache_path: {tmp_path}/"
    )
    cfg = tmp_path / "download_profiling.yaml"
    cfg.write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(cfg), "--check"]) == 0
    assert main(["run", str(cfg)]) == 0
    cache = tmp_path / "cache_download_yaml"
    first = json.loads((cache / "download_step1.meta.json").read_text())
    assert (
        first["operator"] == "ImageDownloader"
        and first["rows_out"] == 4
        and first["rejected_reasons"] == {"http_404": 1}
    )
    metadata = pd.read_json(cache / "download_step2.jsonl", lines=True)
    assert metadata["width"].tolist() == [64, 80, 90, 400] and metadata["image_error"].isna().all()
    assert server.total == 5
    assert main(["run", str(cfg), "--no-resume"]) == 0  # every step again: the files are reused
    assert server.total == 6  # only the 404 is asked again
