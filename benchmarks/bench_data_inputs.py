"""Reading WebDataset shards and a Hugging Face Parquet shard into a metadata step, against bare scans.

    python benchmarks/bench_data_inputs.py [--n 100000] [--per-shard 10000] [--workers 1]

For each format, two timings over the same N small JPEGs (with a caption each):

- baseline: a bare loop over the files (``tarfile`` in stream mode, or ``pyarrow.parquet`` row groups) that
  reads every image and computes the same header facts (``dataflow.media.image_info`` on the bytes): the
  reading and the bookkeeping are what is measured, not the header parsing both do;
- dataflow: ``FileStorage`` over the input plus ``ImageMetadataEvaluator`` writing step 1 (the image read
  back through its reference, header parsed, row written), on ``--workers`` processes.

It first checks that both saw every image and agree on every width and height, then prints both rates and
the ratio (dataflow / baseline, higher is better; the issue asks for >= 0.8).
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dataflow.media import image_info
from dataflow.operators.core_vision import ImageMetadataEvaluator
from dataflow.utils.storage import FileStorage


def small_jpegs(k: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        w, h = 40 + i % 17, 30 + i % 11
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def write_shards(folder: Path, n: int, per: int, jpegs: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for s in range(0, n, per):
        with tarfile.open(folder / f"{s // per:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(s, min(n, s + per)):
                for ext, data in (("jpg", jpegs[i % len(jpegs)]), ("txt", f"caption {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))


def write_parquet(path: Path, n: int, jpegs: list[bytes]) -> None:
    image = pa.array(
        [{"bytes": jpegs[i % len(jpegs)], "path": f"{i:09d}.jpg"} for i in range(n)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": image, "caption": [f"caption {i}" for i in range(n)]}), path, row_group_size=100)


def bare_tar(folder: Path) -> list[tuple[int, int]]:
    sizes = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard, "r|") as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    info = image_info(tar.extractfile(member).read())
                    sizes.append((info["width"], info["height"]))
    return sizes


def bare_parquet(path: Path) -> list[tuple[int, int]]:
    sizes = []
    file = pq.ParquetFile(path)
    for g in range(file.num_row_groups):
        for cell in file.read_row_group(g, columns=["image"]).column(0).to_pylist():
            info = image_info(cell["bytes"])
            sizes.append((info["width"], info["height"]))
    return sizes


def ours(source: Path, cache: Path, workers: int) -> list[tuple[int, int]]:
    storage = FileStorage(source, cache_path=cache, file_name_prefix="bench", cache_type="parquet")
    ImageMetadataEvaluator(num_workers=workers).run(storage.step())
    meta = storage.manifest(1)
    assert meta["rows_in"] == meta["rows_out"], meta
    step = pq.read_table(storage.step_path(1), columns=["width", "height", "image_error"]).to_pydict()
    assert all(e is None for e in step["image_error"]), "some images could not be read: not a figure"
    return list(zip(step["width"], step["height"]))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    jpegs = small_jpegs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "shards", args.n, args.per_shard, jpegs)
        write_parquet(tmp / "shard.parquet", args.n, jpegs)
        print(f"{args.n} samples, {args.workers} worker(s)")
        print(f"{'input':<12} {'baseline':>22} {'dataflow':>22} {'ratio':>7}")
        for name, bare, source in (
            ("webdataset", bare_tar, tmp / "shards"),
            ("hf parquet", bare_parquet, tmp / "shard.parquet"),
        ):
            want, t_bare = timed(bare, source)
            got, t_ours = timed(ours, source, tmp / f"cache_{name.replace(' ', '_')}", args.workers)
            assert len(want) == len(got) == args.n, (len(want), len(got))
            assert [tuple(map(int, s)) for s in got] == want, "sizes differ from the bare scan"
            print(
                f"{name:<12} {t_bare:8.2f} s {args.n / t_bare:9.0f}/s {t_ours:8.2f} s {args.n / t_ours:9.0f}/s "
                f"{t_bare / t_ours:6.2f}x"
            )


if __name__ == "__main__":
    main()
