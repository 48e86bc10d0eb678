"""A worked example of a user operator living outside the package.

Copy this file into your project's ``operators/`` folder (next to ``pipelines/`` and ``configs/``):
``dataflow run``, ``dataflow ops`` and the registry find it without installing anything.
"""

from __future__ import annotations

from dataflow.core import OperatorABC
from dataflow.utils.registry import OPERATOR_REGISTRY


@OPERATOR_REGISTRY.register()
class CaptionLengthEvaluator(OperatorABC):
    """Counts the words of each caption (example user operator).

    A list of captions counts its longest one. Rows with no caption get 0.

    Parameters:
        lowercase: lowercase the text first
        input_text_key: column holding the caption: one string or a list of strings
        output_key: column the count is written to
    """

    description = "Counts the words of each caption (example user operator)."
    description_zh = "统计每条描述的词数（用户算子示例）。"
    category = "eval"
    execution = "rowwise"  # each row on its own: the Ray engine may run it on any slice of the table

    def __init__(self, lowercase: bool = True):
        self.lowercase = lowercase

    def run(self, storage, input_text_key: str = "caption", output_key: str = "caption_words") -> list[str]:
        df = storage.read("dataframe")
        df[output_key] = df[input_text_key].map(self._words).astype("int64")
        storage.write(df)
        return [output_key]

    @staticmethod
    def _words(value) -> int:
        if isinstance(value, str):
            return len(value.split())
        if isinstance(value, (list, tuple)) and value:
            return max(len(str(v).split()) for v in value)
        return 0
