"""The runnable example of an operator's docs page, declared on the class: ``example = Example(...)``.

Free of heavy imports, since operator modules import it when they are defined. ``python -m dataflow.docs_gen``
runs the example on ``example_data/images.jsonl`` in a temporary folder (in a subprocess) and shows its real
output: the step table, some output rows and, for a filter, some rejected rows. The example binds the
operator to ``op`` and writes its steps to ``./cache_docs`` with the prefix ``docs`` (the preamble of
:meth:`Example.on_example_data` does both).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

EXAMPLE_INPUT = "example_data/images.jsonl"
EXAMPLE_CACHE = "./cache_docs"
EXAMPLE_PREFIX = "docs"


def example_preamble(imports: str, module: str = "dataflow.operators.core_vision") -> str:
    """The lines every example starts with: the imports and a ``FileStorage`` over the example data."""
    return (
        f"from {module} import {imports}\n"
        "from dataflow.utils.storage import FileStorage\n\n"
        f'storage = FileStorage("{EXAMPLE_INPUT}", cache_path="{EXAMPLE_CACHE}",\n'
        f'                      file_name_prefix="{EXAMPLE_PREFIX}", cache_type="jsonl")\n'
    )


@dataclass
class Example:
    """How to document one operator by running it: ``code`` binds the operator to ``op``."""

    code: str
    show: list[str] | None = None  # output columns shown (default: the image and the new columns)
    rows: list[str] | None = None  # images of the output rows shown, in order (default: the first 3)
    rejected_show: list[str] | None = None
    rejected_rows: list[str] | None = None  # images of the rejected rows shown (default: varied reasons)
    digits: int = 4  # floats are rounded to this many decimals
    note: str = ""  # a sentence above the code
    not_run: str = ""  # when set, the code is shown but not run, with this reason
    real_use: str = ""  # model-backed operators: the call with the real model (shown, not run)

    def __post_init__(self):
        # the code may be indented like the class body that declares it
        self.code = textwrap.dedent(self.code).strip("\n") + "\n"
        self.real_use = textwrap.dedent(self.real_use).strip("\n")

    @classmethod
    def on_example_data(
        cls, imports: str, body: str, module: str = "dataflow.operators.core_vision", **fields
    ) -> Example:
        """An example whose code is :func:`example_preamble` (``from module import imports``) then ``body``."""
        return cls(example_preamble(imports, module) + textwrap.dedent(body).strip("\n") + "\n", **fields)
