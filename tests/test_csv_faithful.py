"""CSV caches and inputs read back exactly what they hold, or refuse with an error naming the column / line.

The rule (``dataflow/storage/csv_table.py``): RFC 4180 quoting (line breaks of every kind inside quoted
fields), a bare empty field is the only null and ``""`` the empty string, and a column becomes
booleans / integers / floats only when every value is exactly the text Python writes for one.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import math
import random

import numpy as np
import pandas as pd
import pytest

from dataflow.storage import FileStorage, StorageFormatError
from dataflow.storage.formats import read_columns, read_table, write_table

TRICKY = [
    "a bare\rcarriage return",
    "a new\nline",
    "a windows\r\nline end",
    'she said "hi", then left',
    "comma, comma,",
    "  leading and trailing spaces  ",
    "NA",
    "None",
    "null",
    "N/A",
    "nan",
    '""',
    '"',
    "007",
    "ünïcödé 漢字 🙂",
    "\ttab",
    "",
]


def write_bytes(tmp_path, data: bytes, name="in.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def round_trip(tmp_path, df):
    path = tmp_path / "t.csv"
    write_table(df, path, "csv")
    return read_table(path, "csv")[0]


def cells(df):
    """Every column as (type name, value) pairs: equal only when the types are equal too."""
    return {c: [(type(v).__name__, "nan" if isinstance(v, float) and math.isnan(v) else v) for v in df[c]] for c in df}


def assert_same(back, df):
    assert list(back.columns) == list(df.columns)
    assert cells(back) == cells(df)


# ---------------------------------------------------------------- line breaks and quoting


def test_captions_with_line_breaks_quotes_and_null_words_round_trip(tmp_path):
    df = pd.DataFrame({"caption": TRICKY, "n": range(len(TRICKY))})
    back = round_trip(tmp_path, df)
    assert len(back) == len(TRICKY)
    assert back["caption"].tolist() == TRICKY  # "" stays "", "NA" stays "NA", \r stays inside its field
    assert back["n"].tolist() == list(range(len(TRICKY)))


def test_a_users_csv_with_line_breaks_in_quoted_fields(tmp_path):
    path = write_bytes(tmp_path, b'image,caption\na.jpg,"one\rtwo"\nb.jpg,"three\r\nfour"\nc.jpg,"five\nsix"\n')
    df = read_table(path, "csv")[0]
    assert df["caption"].tolist() == ["one\rtwo", "three\r\nfour", "five\nsix"]
    assert df["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]


def test_a_csv_written_by_the_csv_module_reads_back_exactly(tmp_path):
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["image", "caption"])
    rows = [[f"{i}.jpg", text] for i, text in enumerate(TRICKY) if text]
    writer.writerows(rows)
    df = read_table(write_bytes(tmp_path, buf.getvalue().encode()), "csv")[0]
    assert df.values.tolist() == rows


# ---------------------------------------------------------------- ragged rows, duplicates, encoding


@pytest.mark.parametrize(
    "data, line, fields",
    [
        (b'a,b\n1,x\n"2\nmore",y\n3,z,extra\n', 5, 3),  # the quoted line break counts as a line
        (b"a,b\n1,x\n2\n3,z\n", 3, 1),
        (b"a,b\r\n1,x\r\n2,y,z\r\n", 3, 3),
    ],
)
def test_a_ragged_row_is_refused_naming_its_line(tmp_path, data, line, fields):
    with pytest.raises(StorageFormatError, match=rf"line {line}: row \d+ has {fields} fields? but the header names 2"):
        read_table(write_bytes(tmp_path, data), "csv")


def test_an_unquoted_carriage_return_is_refused_not_split_into_rows(tmp_path):
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows([["image", "caption"], ["a.jpg", "one\rtwo"]])  # \r unquoted
    with pytest.raises(StorageFormatError, match="line 3: row 2 has 1 field but the header names 2"):
        read_table(write_bytes(tmp_path, buf.getvalue().encode()), "csv")


def test_duplicate_headers_are_refused_by_read_table_and_read_columns(tmp_path):
    path = write_bytes(tmp_path, b"image,caption,image\na.jpg,x,b.jpg\n")
    with pytest.raises(StorageFormatError, match="several columns are named 'image'"):
        read_table(path, "csv")
    with pytest.raises(StorageFormatError, match="several columns are named 'image'"):
        read_columns(path, "csv")
    assert read_columns(write_bytes(tmp_path, b'"x\ny",z\n1,2\n', "ok.csv"), "csv") == ["x\ny", "z"]


def test_duplicate_names_are_refused_when_writing(tmp_path):
    with pytest.raises(StorageFormatError, match="several columns are named 'a'"):
        round_trip(tmp_path, pd.DataFrame([[1, 2]], columns=["a", "a"]))


def test_text_that_is_not_utf8_is_refused_naming_its_line(tmp_path):
    with pytest.raises(StorageFormatError, match="line 3: not UTF-8"):
        read_table(write_bytes(tmp_path, b"a,b\n1,x\n2,\xff\n"), "csv")


def test_bom_and_blank_lines(tmp_path):
    df = read_table(write_bytes(tmp_path, b"\xef\xbb\xbfa,b\n1,x\n\n2,y\n\n"), "csv")[0]
    assert list(df.columns) == ["a", "b"] and df["a"].tolist() == [1, 2] and df["b"].tolist() == ["x", "y"]


def test_a_row_longer_than_a_parser_block(tmp_path):
    caption = "line\n" * 600_000  # 3 MB in one quoted field
    df = pd.DataFrame({"caption": [caption, "short"], "n": [1, 2]})
    assert round_trip(tmp_path, df)["caption"].tolist() == [caption, "short"]


# ---------------------------------------------------------------- nulls and types


def test_null_words_and_leading_zeros_stay_strings(tmp_path):
    data = b'a,b,c\nNA,007,x\nNone,8,\nnull,9,""\nN/A,10,y\nnan,11,z\n""""\t,12,w\n'
    df = read_table(write_bytes(tmp_path, data), "csv")[0]
    assert df["a"].tolist() == ["NA", "None", "null", "N/A", "nan", '"\t']
    assert df["b"].tolist() == ["007", "8", "9", "10", "11", "12"]  # "007" keeps the column text
    c = df["c"].tolist()
    assert c[0] == "x" and pd.isna(c[1]) and c[2] == ""  # bare empty: null; quoted empty: ""


@pytest.mark.parametrize(
    "texts, expected",
    [
        (["1", "-2", "30"], [1, -2, 30]),
        (["1.5", "2.25", "-0.0", "1e-05", "inf", "0.30000000000000004"], [1.5, 2.25, -0.0, 1e-05, math.inf, 0.1 + 0.2]),
        (["True", "False"], [True, False]),
        (["1.50", "2.25"], ["1.50", "2.25"]),  # 1.50 does not write back as 1.50: text
        (["1", "0.5"], ["1", "0.5"]),  # an int among floats: would write back as 1.0
        (["1e5", "2.0"], ["1e5", "2.0"]),
        (["+1", "2"], ["+1", "2"]),
        (["-0", "2"], ["-0", "2"]),
        (["true", "false"], ["true", "false"]),
        (["1.", ".5"], ["1.", ".5"]),
        ([" 1", "2"], [" 1", "2"]),
    ],
)
def test_a_column_converts_only_when_every_value_writes_back_as_itself(tmp_path, texts, expected):
    data = ("v,w\n" + "".join(f"{t},x\n" for t in texts)).encode()
    back = read_table(write_bytes(tmp_path, data), "csv")[0]["v"].tolist()
    assert [(type(v), repr(v)) for v in back] == [(type(v), repr(v)) for v in expected]


def test_ints_with_nulls_stay_ints_as_in_the_other_caches(tmp_path):
    df = read_table(write_bytes(tmp_path, b"a,b,c\n1,True,x\n,,y\n3,False,z\n"), "csv")[0]
    assert df["a"].dtype == object and [type(v) for v in df["a"]] == [int, type(None), int]
    assert df["b"].dtype == object and df["b"].tolist() == [True, None, False]
    frame = pd.DataFrame(
        {
            "i": pd.Series([1, None, 3], dtype=object),
            "b": pd.Series([True, None, False], dtype=object),
            "s": ["x", None, "z"],
            "f": [0.5, np.nan, 1.0],
            "n": [4, 5, 6],
        }
    )
    reads = {}
    for kind in ("jsonl", "parquet", "csv"):
        path = tmp_path / f"t.{kind}"
        write_table(frame, path, kind)
        reads[kind] = read_table(path, kind)[0]
    for kind in ("jsonl", "parquet"):
        assert reads["csv"].dtypes.to_dict() == reads[kind].dtypes.to_dict(), kind
        assert cells(reads["csv"]) == cells(reads[kind]), kind


def test_thirty_digit_integers_stay_exact(tmp_path):
    big = 123456789012345678901234567890
    df = read_table(write_bytes(tmp_path, f"id,n\n{big},1\n{-big},2\n,3\n".encode()), "csv")[0]
    assert df["id"].tolist() == [big, -big, None] and type(df["id"][0]) is int
    frame = pd.DataFrame({"id": [big, 5, -(10**40)], "u": np.array([2**64 - 1, 0, 7], dtype=np.uint64)})
    back = round_trip(tmp_path, frame)
    assert back["id"].tolist() == [big, 5, -(10**40)] and back["u"].tolist() == [2**64 - 1, 0, 7]


def test_floats_bools_and_nulls_round_trip_exactly(tmp_path):
    floats = [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 1e16, 123456789.0, math.inf, -math.inf, np.nan]
    df = pd.DataFrame(
        {
            "f": floats,
            "f32": np.array([0.1, 2.5, 1e-8, 3e38, 0, 0, 0, 0, 0, 0], dtype=np.float32),
            "b": [True, False] * 5,
            "s": ["", None, "x", "", None, "y", " ", "", "z", None],  # "" and null told apart
            "none": [None] * 10,
            "Int64": pd.array([1, None, 3, 4, 5, 6, 7, 8, 9, None], dtype="Int64"),
        }
    )
    back = round_trip(tmp_path, df)
    assert [repr(v) for v in back["f"]] == [repr(v) for v in floats]
    assert back["f32"].tolist() == df["f32"].astype(np.float64).tolist()  # float32 values, exactly
    assert back["b"].dtype == bool and back["b"].tolist() == [True, False] * 5
    s = back["s"].tolist()
    assert [v if isinstance(v, str) else None for v in s] == ["", None, "x", "", None, "y", " ", "", "z", None]
    assert back["none"].tolist() == [None] * 10
    assert back["Int64"].tolist() == [1, None, 3, 4, 5, 6, 7, 8, 9, None]


def test_header_only_and_empty_files(tmp_path):
    for data in (b"image,caption\n", b"image,caption"):
        df = read_table(write_bytes(tmp_path, data), "csv")[0]
        assert list(df.columns) == ["image", "caption"] and len(df) == 0
    assert read_table(write_bytes(tmp_path, b""), "csv")[0].shape == (0, 0)
    back = round_trip(tmp_path, pd.DataFrame({"a": pd.Series([], dtype=int), "b": pd.Series([], dtype=object)}))
    assert list(back.columns) == ["a", "b"] and len(back) == 0


# ---------------------------------------------------------------- what CSV cannot hold is refused


@pytest.mark.parametrize(
    "column, message",
    [
        ([[1.0], [2.0]], "'x' holds lists or dicts"),
        ([{"a": 1}, None], "'x' holds lists or dicts"),
        ([b"\x89PNG", b"x"], "'x' holds bytes"),
        ([decimal.Decimal("1.10"), None], "'x' holds Decimal values"),
        ([datetime.date(2020, 1, 1), None], "'x' holds date values"),
        (pd.to_datetime(["2020-01-01", "2021-01-01"]), "'x' holds Timestamp values"),
        ([1, "a"], "'x' mixes int and str values"),
        ([1, 2.5], "'x' mixes float and int values"),
        ([True, 1], "'x' mixes bool and int values"),
        (["1", "2"], "'x' holds text that CSV would read back as integers"),
        (["1.5", None], "'x' holds text that CSV would read back as floats"),
        (["True", ""], "'x' holds text that CSV would read back as booleans"),
        (["ok", "lone \ud800 surrogate"], "'x' holds text that is not valid Unicode"),
    ],
)
def test_values_csv_cannot_hold_are_refused_naming_the_column(tmp_path, column, message):
    df = pd.DataFrame({"x": pd.Series(column, dtype=object), "y": [1, 2]})
    with pytest.raises(StorageFormatError, match=message) as info:
        round_trip(tmp_path, df)
    assert "row " in str(info.value) or "jsonl" in str(info.value)


def test_refusals_suggest_another_cache_type(tmp_path):
    with pytest.raises(StorageFormatError, match=r"row 1\).*cache_type='jsonl' or 'parquet'"):
        round_trip(tmp_path, pd.DataFrame({"x": pd.Series([None, b"b"], dtype=object), "y": [1, 2]}))


def test_a_single_column_with_nulls_is_refused(tmp_path):
    with pytest.raises(StorageFormatError, match="only column and holds a null \\(row 1\\)"):
        round_trip(tmp_path, pd.DataFrame({"caption": ["a", None]}))
    assert round_trip(tmp_path, pd.DataFrame({"caption": ["a", ""]}))["caption"].tolist() == ["a", ""]


def test_names_that_are_not_text_are_refused(tmp_path):
    with pytest.raises(StorageFormatError, match="column name 0 is not text"):
        round_trip(tmp_path, pd.DataFrame({0: [1]}))


# ---------------------------------------------------------------- the whole pipeline


def test_a_csv_input_through_a_step_writes_a_csv_cache_that_reads_back_as_the_input(tmp_path):
    from dataflow.operators.core_vision import ScoreRangeFilter

    captions = [t for t in TRICKY if t] + ["plain"]
    n = len(captions)
    expected = pd.DataFrame(
        {
            "image": [f"img_{i:03d}.jpg" for i in range(n)],
            "caption": captions,
            "w": list(range(n)),
            "score": [i / 7 for i in range(n)],
            "ok": [i % 3 == 0 for i in range(n)],
            "maybe": pd.Series([None if i % 4 == 0 else i for i in range(n)], dtype=object),
        }
    )
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows([expected.columns, *expected.itertuples(index=False)])
    src = write_bytes(tmp_path, buf.getvalue().encode())
    storage = FileStorage(
        first_entry_file_name=src, cache_path=tmp_path / "cache", file_name_prefix="s", cache_type="csv"
    )
    step = storage.step()
    assert_same(step.read(), expected)  # the input reads as written, types included
    ScoreRangeFilter(min_score=1).run(step, input_score_key="w")
    written = tmp_path / "cache" / "s_step1.csv"
    assert written.exists()
    back = storage.step().read()
    assert_same(back, expected[expected["w"] >= 1].reset_index(drop=True))
    rejected = storage.read_rejected(1)
    assert rejected["caption"].tolist() == [captions[0]] and rejected["reason"].tolist() == ["below_min"]
    storage.write(back)  # a step that keeps everything writes the same table again
    assert_same(read_table(tmp_path / "cache" / "s_step2.csv", "csv")[0], back)


# ---------------------------------------------------------------- properties


SPECIAL = [
    "\r",
    "\n",
    "\r\n",
    '"',
    ",",
    " ",
    "\t",
    "NA",
    "null",
    "None",
    "nan",
    "0",
    "1",
    "é",
    "漢",
    "🙂",
    "\x00",
    "''",
]


def random_text(rng: random.Random) -> str:
    return "".join(
        rng.choice(SPECIAL) if rng.random() < 0.5 else rng.choice("ab xyz0") for _ in range(rng.randint(0, 8))
    )


def random_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.4:
        return rng.random() * 10 ** rng.randint(-8, 20) * rng.choice([-1, 1])
    if pick < 0.8:  # any bit pattern (subnormals, huge, tiny)
        value = np.frombuffer(rng.getrandbits(64).to_bytes(8, "little"), dtype=np.float64)[0].item()
        return value if math.isfinite(value) else 1.0
    return rng.choice([0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, 0.5, 1e16, 1e-4, 9.999e-5])


def random_frame(rng: random.Random) -> pd.DataFrame:
    rows = rng.randint(1, 30)
    columns = {"anchor": [f"row {i}" for i in range(rows)]}  # text with a letter: never read as numbers
    for j in range(rng.randint(1, 6)):
        kind = rng.choice(["text", "int", "int_null", "big", "float", "bool", "bool_null", "null"])
        if kind == "text":
            values = [None if rng.random() < 0.2 else random_text(rng) for _ in range(rows)]
            values[rng.randrange(rows)] = "text " + random_text(rng)
            col = pd.Series(values, dtype=object)
        elif kind == "int":
            col = pd.Series([rng.randint(-(2**63), 2**63 - 1) for _ in range(rows)], dtype=np.int64)
        elif kind == "int_null":
            col = pd.Series(
                [None if rng.random() < 0.3 else rng.randint(-1000, 1000) for _ in range(rows)], dtype=object
            )
        elif kind == "big":
            col = pd.Series(
                [None if rng.random() < 0.2 else rng.randint(-(10**30), 10**30) for _ in range(rows)], dtype=object
            )
        elif kind == "float":
            col = pd.Series([random_float(rng) for _ in range(rows)], dtype=np.float64)
        elif kind == "bool":
            col = pd.Series([rng.random() < 0.5 for _ in range(rows)], dtype=bool)
        elif kind == "bool_null":
            col = pd.Series([None if rng.random() < 0.3 else rng.random() < 0.5 for _ in range(rows)], dtype=object)
        else:
            col = pd.Series([None] * rows, dtype=object)
        columns[f'{kind} {j},\n"q"'] = col
    return pd.DataFrame(columns)


def normalised(df: pd.DataFrame) -> dict:
    """What a faithful read gives back: nulls as None, ints as ints, everything else as itself."""
    out = {}
    for c in df:
        values = df[c].tolist()
        present = [v for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)))]
        if not present and df[c].dtype != np.float64:
            out[c] = [None] * len(values)
        elif df[c].dtype == np.float64 and not present:
            out[c] = [None] * len(values)  # a column with no value reads as nulls
        else:
            out[c] = [
                None if v is None or (isinstance(v, float) and math.isnan(v)) else (type(v).__name__, repr(v))
                for v in values
            ]
    return out


def test_random_frames_round_trip_exactly(tmp_path):
    rng = random.Random(20240611)
    for _ in range(150):
        df = random_frame(rng)
        back = round_trip(tmp_path, df)
        assert list(back.columns) == list(df.columns)
        assert normalised(back) == normalised(df)
        for c in df:  # the types the other caches give: no float ints, no object floats
            if df[c].dtype == np.int64:
                assert back[c].dtype == np.int64
            if df[c].dtype == bool:
                assert back[c].dtype == bool


def test_random_users_csv_text_reads_back_exactly(tmp_path):
    rng = random.Random(7)
    for _ in range(100):
        width = rng.randint(2, 5)
        rows = [[f"h{j}" for j in range(width)]]
        rows += [["x" + random_text(rng) for _ in range(width)] for _ in range(rng.randint(0, 20))]
        buf = io.StringIO(newline="")
        # (QUOTE_MINIMAL quotes a field holding \r only when \r is part of the line terminator)
        terminator, quoting = rng.choice([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL), ("\r", csv.QUOTE_ALL)])
        csv.writer(buf, lineterminator=terminator, quoting=quoting).writerows(rows)
        df = read_table(write_bytes(tmp_path, buf.getvalue().encode()), "csv")[0]
        assert list(df.columns) == rows[0]
        assert df.values.tolist() == rows[1:]


def test_floats_are_written_as_repr_writes_them():
    from dataflow.storage.csv_table import float_texts

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**63, 300_000, dtype=np.uint64).view(np.float64)
    x = np.concatenate(
        [
            bits[np.isfinite(bits)],
            rng.random(300_000),
            rng.normal(size=100_000) * 10.0 ** rng.integers(-20, 25, 100_000),
            np.round(rng.random(100_000) * 1000, 2),
            rng.integers(-(2**53), 2**53, 100_000).astype(np.float64),
            [0.0, -0.0, np.inf, -np.inf, 1e16, 1e-4, 9.999999999999999e-05, 9999999999999998.0, 5e-324],
        ]
    )
    x *= np.where(rng.random(len(x)) < 0.5, -1.0, 1.0)
    assert float_texts(x).to_pylist() == list(map(repr, x.tolist()))


def test_reading_a_big_csv_is_vectorised(tmp_path):
    n = 200_000
    df = pd.DataFrame({"caption": [f'caption {i}, "q"' for i in range(n)], "w": range(n), "s": np.arange(n) / 3})
    back = round_trip(tmp_path, df)
    assert back["w"].dtype == np.int64 and back["s"].dtype == np.float64
    assert back["caption"].tolist() == df["caption"].tolist() and (back["s"].to_numpy() == df["s"].to_numpy()).all()
