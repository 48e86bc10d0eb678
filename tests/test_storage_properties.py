"""Property tests: odd values survive a storage round trip (NaN, inf, huge ints, unicode, empty lists, nested dicts)."""

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.utils.storage import FileStorage

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
TEXT = st.text(max_size=12)
SCALARS = st.one_of(st.none(), INT64, FLOATS, TEXT, st.booleans())
JSON_VALUES = st.recursive(
    SCALARS.filter(lambda v: not (isinstance(v, float) and math.isnan(v))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from(["a", "b", "ç", "键", "d e"])


def missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def same(a, b):
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) and type(a) is type(b) or (isinstance(b, np.bool_) and a == bool(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float, np.number)):
        return a == b or float(a) == float(b)
    if isinstance(a, (list, tuple, np.ndarray)):
        return isinstance(b, (list, tuple, np.ndarray)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def round_trip(tmp, cache_type, df):
    src = tmp / "seed.jsonl"
    src.write_text("".join('{"x": 0}\n' for _ in range(len(df))))
    storage = FileStorage(src, cache_path=tmp / cache_type, file_name_prefix="p", cache_type=cache_type)
    s = storage.step()
    s.read()
    s.write(df)
    return storage.step().read()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.dictionaries(KEYS, JSON_VALUES, min_size=1, max_size=4), min_size=1, max_size=6))
def test_json_types_round_trip(tmp_path_factory, rows):
    df = pd.DataFrame(rows)
    for cache_type in ("jsonl", "json"):
        back = round_trip(tmp_path_factory.mktemp(cache_type), cache_type, df)
        for i, row in enumerate(rows):
            for key, value in row.items():
                assert same(value, back.iloc[i][key]), (cache_type, key, value, back.iloc[i][key])
            for key in set(back.columns) - set(row):
                assert missing(back.iloc[i][key])  # a key absent from a row reads back as null


COLUMN = st.one_of(
    st.lists(INT64, min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), INT64), min_size=3, max_size=3),
    st.lists(FLOATS, min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), TEXT), min_size=3, max_size=3),
    st.lists(st.lists(st.floats(allow_nan=False, width=32), max_size=4), min_size=3, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(columns=st.dictionaries(KEYS, COLUMN, min_size=1, max_size=4))
def test_typed_columns_round_trip_all_formats(tmp_path_factory, columns):
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()}).infer_objects()
    for cache_type in ("jsonl", "json", "parquet"):
        back = round_trip(tmp_path_factory.mktemp(cache_type), cache_type, df)
        assert list(back.columns) == list(df.columns)
        for key, values in columns.items():
            for a, b in zip(values, back[key].tolist()):
                if cache_type != "parquet" and isinstance(a, float) and math.isnan(a):
                    assert missing(b)  # JSON has no NaN: a NaN float is written as null
                    continue
                assert same(a, b), (cache_type, key, a, b)
