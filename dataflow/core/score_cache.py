"""An operator's per-row results through its storage's score cache (:mod:`dataflow.storage.score_cache`).

:func:`cached_rows` wraps the per-row work of an evaluator (``ImageEvaluator.score_rows``) or a dedup
filter's keys (``DedupFilter.row_keys``): rows scored before by the same operator, on the same image and the
same other inputs, are served from the cache; the others are computed, and those that succeeded are kept.
An operator class takes part with ``cache_rows = True``; ``cache_ignores`` names the parameters its per-row
results do not depend on (a dedup filter's threshold), so changing them still finds the rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson
import pandas as pd

import dataflow
from dataflow.core.fingerprint import code_fingerprint
from dataflow.core.parallel import ItemResult
from dataflow.log import get_logger
from dataflow.storage.manifest import fingerprint

logger = get_logger("dataflow.cache")
NOTE = "score_cache"  # the manifest's notes key: {"hits": served, "computed": scored now}


def cache_fingerprint(operator) -> str:
    """What an operator's per-row results depend on: class, version, code, parameters (less ``cache_ignores``)
    and the dataflow version (the helpers an operator calls are not in its class's code)."""
    cls = type(operator)
    ignored = set(getattr(cls, "cache_ignores", ()))
    params = {k: v for k, v in operator.params.items() if k not in ignored}
    name = f"{cls.__module__}.{cls.__qualname__}"
    return fingerprint("rows", name, cls.version, code_fingerprint(cls), params, dataflow.__version__)


def cached_rows(
    operator, storage, df: pd.DataFrame, keys: dict, compute: Callable[[pd.DataFrame], list[ItemResult]]
) -> list[ItemResult]:
    """``compute(df)``, with the rows the cache holds served from it (see the module docstring)."""
    cache = _cache_of(operator, storage, keys)
    image_key = keys.get("input_image_key")
    if cache is None or not isinstance(image_key, str) or image_key not in df.columns or not len(df):
        return compute(df)
    row_keys = _row_keys(operator, cache, df, keys, image_key, storage.image_base)
    found = cache.get([k for k in row_keys if k is not None])
    results: list[ItemResult | None] = [None] * len(df)
    missing = []
    for i, key in enumerate(row_keys):
        if key is not None and key in found:
            results[i] = ItemResult(found[key])
        else:
            missing.append(i)
    if missing:
        computed = compute(df.iloc[missing] if len(missing) < len(df) else df)
        keep = []
        for i, result in zip(missing, computed):
            results[i] = result
            if result.error is None and result.value is not None and row_keys[i] is not None:
                keep.append((row_keys[i], result.value))
        _put(cache, keep, type(operator).__name__)
    hits = len(df) - len(missing)
    storage.note(NOTE, {"hits": hits, "computed": len(missing)})
    if hits:
        logger.info("%s: %d of %d rows from the score cache", type(operator).__name__, hits, len(df))
    return results


def _cache_of(operator, storage, keys: dict):
    if not getattr(type(operator), "cache_rows", False):
        return None
    if any(keys.get(k) for k in getattr(type(operator), "model_skipped_by", ())):
        return None  # the rows carry what the operator would compute (vectors of an earlier step)
    opener = getattr(storage, "score_cache", None)
    return opener() if callable(opener) else None


def _row_keys(operator, cache, df: pd.DataFrame, keys: dict, image_key: str, base_dir: str) -> list[bytes | None]:
    """Per row: the operator's fingerprint, the image's content and the values of the other columns it reads."""
    images = cache.content_keys(df[image_key].tolist(), base_dir)
    others = sorted((what, col) for what, col in operator.required_columns(keys).items() if col != image_key)
    columns = [df[col].tolist() for _, col in others if col in df.columns]
    seed = cache_fingerprint(operator).encode()
    out: list[bytes | None] = []
    for i, image in enumerate(images):
        if image is None:
            out.append(None)
            continue
        h = hashlib.blake2b(seed, digest_size=16)
        h.update(image)
        for values in columns:
            h.update(orjson.dumps(values[i], option=orjson.OPT_SERIALIZE_NUMPY, default=repr))
        out.append(h.digest())
    return out


def _put(cache, items: list, name: str) -> None:
    try:
        cache.put(items)
    except TypeError as exc:  # a value JSON cannot hold: computed every time, said once
        logger.warning("%s: results not kept in the score cache (%s)", name, exc)
