"""The one cache-folder reader: the pipeline prefix, its manifests by step, and the per-step table."""

import json

import pytest

from dataflow.storage.cache_folder import CacheFolderReadError, format_steps, load_manifests, only_prefix


def manifest(step, operator="ScoreRangeFilter", **extra):
    return {
        "step": step,
        "operator": operator,
        "rows_in": 10,
        "rows_out": 8,
        "rows_rejected": 2,
        "seconds": 0.123,
        "new_columns": [],
        **extra,
    }


def write(folder, name, meta):
    (folder / name).write_text(json.dumps(meta))


def test_only_prefix(tmp_path):
    with pytest.raises(CacheFolderReadError, match=r"holds no step manifests \(\*_step<N>\.meta\.json\)"):
        only_prefix(tmp_path)
    write(tmp_path, "a_step1.meta.json", manifest(1))
    assert only_prefix(tmp_path) == "a"
    write(tmp_path, "b_step1.meta.json", manifest(1))
    with pytest.raises(CacheFolderReadError) as info:
        only_prefix(tmp_path)
    assert str(info.value) == f"{tmp_path} holds several pipelines; choose one with --prefix: a, b"
    assert isinstance(info.value, ValueError)


def test_manifests_sorted_by_step_and_misnamed_ones_ignored(tmp_path):
    for step in (10, 2, 1):
        write(tmp_path, f"p_step{step}.meta.json", manifest(step))
    write(tmp_path, "p_step3.meta.json", manifest(4))  # a copy under another step's name
    write(tmp_path, "p_step_x_step1.meta.json", manifest(1))  # another pipeline, prefix "p_step_x"
    write(tmp_path, "p_step5.meta.json", {"operator": "no step recorded"})
    (tmp_path / "p_step6.meta.json").write_text("{not json")
    manifests = load_manifests(tmp_path, "p")
    assert list(manifests) == [1, 2, 10]
    assert all(m["step"] == s for s, m in manifests.items())


def test_format_steps_table(tmp_path):
    write(
        tmp_path,
        "p_step1.meta.json",
        manifest(1, "ImageMetadataEvaluator", rows_rejected=0, rows_out=10, new_columns=["width", "height"]),
    )
    write(tmp_path, "p_step2.meta.json", manifest(2, seconds=12.5))
    write(
        tmp_path,
        "p_step3.meta.json",
        manifest(3, "ImageQualityEvaluator", rows_in=8, rows_out=8, rows_rejected=0, new_columns=["sharpness"])
        | {"notes": {"score_cache": {"hits": 6, "computed": 2}}},
    )
    assert format_steps(str(tmp_path), "p").splitlines() == [
        "step  operator                in  out  rejected  seconds  from cache  new columns",
        "1     ImageMetadataEvaluator  10  10   0         0.12     -           width, height",
        "2     ScoreRangeFilter        10  8    2         12.50    -           -",
        "3     ImageQualityEvaluator   8   8    0         0.12     6           sharpness",
    ]


def test_cli_and_report_keep_their_errors_and_names(tmp_path):
    from dataflow import cli
    from dataflow.report.cache import ReportError
    from dataflow.report.cache import only_prefix as report_only_prefix

    assert cli.format_steps is format_steps
    with pytest.raises(ReportError, match="holds no step manifests"):
        report_only_prefix(tmp_path)
    with pytest.raises(cli._UserError, match="holds no step manifests"):
        cli._only_prefix(tmp_path)
