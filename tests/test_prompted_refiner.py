"""PromptedRefiner (DataFlow's name): a text column rewritten through a serving, against a chat server on
127.0.0.1 that answers with the user's text (so each answer shows what was asked)."""

from __future__ import annotations

import pandas as pd
import pytest
from test_vlm_serving import FAST, MODEL, Server, table, write_jpeg

from dataflow.operators.core_text import PromptedRefiner as FromDataFlowPath
from dataflow.operators.core_vision.refine.prompted_refiner import PromptedRefiner
from dataflow.serving import APIVLMServing_openai
from dataflow.storage.manifest import check_accounting
from dataflow.utils.storage import FileStorage

CAPTIONS = ["a cat on a sofa", None, "", "two dogs"]


@pytest.fixture
def srv():
    server = Server()
    yield server
    server.stop()


def refine(srv: Server, tmp_path, instruction: str, rows: list[dict] | None = None, **keys) -> pd.DataFrame:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    write_jpeg(folder / "a.jpg", (80, 40))
    rows = rows or [{"image": "a.jpg", "caption": c} for c in CAPTIONS]
    storage = FileStorage(table(folder, rows), cache_path=tmp_path / "cache", file_name_prefix="ref")
    serving = APIVLMServing_openai(api_url=srv.api_url, model_name=MODEL, max_workers=2, **FAST)
    PromptedRefiner(serving, system_prompt=instruction).run(storage.step(), **keys)
    meta = storage.manifest(1)
    check_accounting("refine", meta["rows_in"], meta["rows_out"], meta["rows_rejected"])
    return storage.step().read("dataframe")


def test_rewrites_in_place_as_dataflow_and_skips_rows_without_text(srv, tmp_path):
    out = refine(srv, tmp_path, "ok rewrite: ", input_key="caption")
    assert list(out["caption"][[0, 3]]) == ["ok rewrite: a cat on a sofa |", "ok rewrite: two dogs |"]
    assert pd.isna(out["caption"][1]) and out["caption"][2] == ""  # not sent, kept
    assert srv.total == 2 and out["caption_refine_error"].isna().all()
    # DataFlow puts its instruction in the user turn, with the serving's default system message.
    messages = srv.site.requests[0]["payload"]["messages"]
    assert messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert FromDataFlowPath is PromptedRefiner


def test_output_key_keeps_the_original_and_an_image_can_go_with_the_text(srv, tmp_path):
    out = refine(srv, tmp_path, "ok look: ", input_key="caption", input_image_key="image", output_key="recaption")
    assert out["caption"][0] == "a cat on a sofa"
    assert out["recaption"][0] == "ok look: a cat on a sofa | 80x40"


def test_a_failed_request_keeps_the_old_text_with_the_reason(srv, tmp_path):
    out = refine(srv, tmp_path, "toolong ", input_key="caption")
    assert out["caption"][0] == "a cat on a sofa" and out["caption_refine_error"][0] == "http_4xx"
    assert pd.isna(out["caption_refine_error"][1])


def test_a_missing_column_is_one_clear_error(srv, tmp_path):
    with pytest.raises(KeyError, match="input_key='text' is not a column"):
        refine(srv, tmp_path, "ok ", input_key="text")


def test_prompted_generator_answers_each_text_and_can_ask_for_json(srv, tmp_path):
    from dataflow.operators.core_text import PromptedGenerator

    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"text": "ok one"}, {"text": None}, {"text": "toolong two"}]
    storage = FileStorage(table(folder, rows), cache_path=tmp_path / "cache", file_name_prefix="gen")
    serving = APIVLMServing_openai(api_url=srv.api_url, model_name=MODEL, max_workers=2, **FAST)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    op = PromptedGenerator(serving, system_prompt="Be brief.", user_prompt="", json_schema=schema)
    op.run(storage.step(), input_key="text", output_key="answer")
    out = storage.step().read("dataframe")
    assert out["answer"][0] == "ok one |" and pd.isna(out["answer"][1]) and pd.isna(out["answer"][2])
    assert out["answer_error"][2] == "http_4xx" and pd.isna(out["answer_error"][1])
    sent = srv.site.requests[0]["payload"]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert serving.extra_body is None  # the schema went to a copy: the caller's serving is unchanged
