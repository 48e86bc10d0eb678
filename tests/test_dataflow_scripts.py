"""DataFlow's own scripts, as DataFlow ships them, against this package.

``test/test_batched_pipeline.py`` of OpenDCAI/DataFlow (a BatchedPipelineABC of three PromptedGenerator
steps over APILLMServing_request, run three times) is below word for word; the only change is its
``api_url``, which pointed at a server on the internet and here points at a chat server this test starts on
127.0.0.1 (it answers with the request's text, so each answer shows what was asked).
"""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
import test_vlm_serving
from test_vlm_serving import Server

DATAFLOW_TEST_BATCHED_PIPELINE = """
import re
from dataflow.pipeline import BatchedPipelineABC
from dataflow.operators.core_text import PromptedGenerator
from dataflow.serving import APILLMServing_request
from dataflow.utils.storage import BatchedFileStorage

class AutoOPPipeline(BatchedPipelineABC):

    def __init__(self, file_name_prefix="dataflow_cache_auto_run"):
        super().__init__()
        self.storage = BatchedFileStorage(
            first_entry_file_name="./dataflow/example/GeneralTextPipeline/pt_input.jsonl",
            cache_path="./cache_autoop",
            file_name_prefix=file_name_prefix,
            cache_type="jsonl",
        )
        self.llm_serving1 = APILLMServing_request(
                api_url="API_URL",
                model_name="gpt-5-mini",
                max_workers=100,
        )
        self.op1 = PromptedGenerator(
            llm_serving=self.llm_serving1,
            system_prompt="请将以下内容翻译成中文：",
        )
        self.op2 = PromptedGenerator(
            llm_serving=self.llm_serving1,
            system_prompt="请将以下内容翻译成韩文：",
        )
        self.op3 = PromptedGenerator(
            llm_serving=self.llm_serving1,
            system_prompt="请将以下内容翻译成日语："
        )

    def forward(self):
        self.op1.run(
            self.storage.step(),
            input_key='raw_content',
            output_key='content_cn1'
        )
        self.op2.run(
            self.storage.step(),
            input_key='raw_content',
            output_key='content_cn2'
        )
        self.op3.run(
            self.storage.step(),
            input_key='raw_content',
            output_key='content_cn3'
        )

if __name__ == "__main__":
    pipeline = AutoOPPipeline()
    pipeline.compile()
    pipeline.forward(batch_size=2, resume_from_last=True)
    pipeline.forward(batch_size=2, resume_from_last=False)  # should overwrite

    pipeline2 = AutoOPPipeline(file_name_prefix="new_prefix_auto_run")
    pipeline2.compile()
    pipeline2.forward(batch_size=2, resume_from_last=True) # should create new last_success_step.txt with new prefix
"""

TEXTS = ["The cat sat on the mat.", "A red car in the rain.", "", "Two dogs on a beach.", "Stars over a desert."]


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setattr(test_vlm_serving, "MODEL", "gpt-5-mini")  # the model the script names
    server = Server()
    yield server
    server.stop()


def test_dataflows_batched_pipeline_script_runs_as_shipped(srv, tmp_path, monkeypatch):
    folder = tmp_path / "dataflow" / "example" / "GeneralTextPipeline"
    folder.mkdir(parents=True)
    (folder / "pt_input.jsonl").write_text("".join(json.dumps({"raw_content": t}) + "\n" for t in TEXTS))
    monkeypatch.chdir(tmp_path)
    script = textwrap.dedent(DATAFLOW_TEST_BATCHED_PIPELINE).replace("API_URL", f"{srv.api_url}/chat/completions")
    exec(compile(script, "test_batched_pipeline.py", "exec"), {"__name__": "__main__"})
    asked = len([t for t in TEXTS if t]) * 3
    assert srv.total == asked * 3  # three steps, three runs (the second reruns every step: resume off)
    for prefix in ("dataflow_cache_auto_run", "new_prefix_auto_run"):
        out = pd.read_json(tmp_path / "cache_autoop" / f"{prefix}_step3.jsonl", lines=True)
        assert list(out["raw_content"]) == TEXTS
        for key in ("content_cn1", "content_cn2", "content_cn3"):
            assert out[key].notna().sum() == len(TEXTS) - 1  # the empty row is not sent
        # The system prompt goes as the system message, the row's text as the user's turn.
        assert out["content_cn1"][0] == "The cat sat on the mat. |"
    systems = {r["payload"]["messages"][0]["content"] for r in srv.site.requests}
    assert systems == {"请将以下内容翻译成中文：", "请将以下内容翻译成韩文：", "请将以下内容翻译成日语："}
