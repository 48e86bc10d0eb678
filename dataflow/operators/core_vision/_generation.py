"""Asking a serving for one answer per row, with finished rows kept in the step's journal as they arrive.

A generate step is the slowest step a pipeline has (seconds a row, for hours), so an answer is never asked
for twice: each one is appended to the step's row journal the moment it arrives (``FileStorage.journal``),
and after a crash or Ctrl-C the rerun asks only for the rows the journal lacks. A row is keyed by what its
answer depends on: its images (paths as themselves, bytes by their hash), its prompt and the system prompt;
the operator, its parameters (the serving's model and sampling settings) and the input step are the
journal's own fingerprint. Failed requests are not kept: a rerun asks again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dataflow.log import get_logger
from dataflow.serving.base import VLMResult, VLMServingABC
from dataflow.storage.journal import NullJournal, row_key, source_token

logger = get_logger("dataflow.generate")


def generate_resumable(
    serving: VLMServingABC,
    storage,
    prompts: Sequence[Any],
    images: Sequence[Any] | None,
    system_prompt: str | None,
    desc: str,
) -> list[VLMResult]:
    """One result per prompt, in order: from the journal where an interrupted run got it, else asked now."""
    n = len(prompts)
    per_row = list(images) if images is not None else [None] * n
    keys = [row_key(source_token(per_row[i]), prompts[i], system_prompt) for i in range(n)]
    results: list[VLMResult | None] = [None] * n
    opened = getattr(storage, "journal", None)  # a user's storage may lack one: then nothing is kept
    with opened("answers") if callable(opened) else NullJournal() as journal:
        for i, key in enumerate(keys):
            if key in journal.done:
                results[i] = VLMResult(text=journal.done[key])
        todo = [i for i in range(n) if results[i] is None]
        if len(todo) < n:
            logger.info(
                "%s: %d of %d answer(s) kept by an interrupted run; asking for %d", desc, n - len(todo), n, len(todo)
            )

        def keep(j: int, result: VLMResult) -> None:
            if result.ok:
                journal.add(keys[todo[j]], result.text)

        asked = serving.generate_results(
            [prompts[i] for i in todo],
            None if images is None else [per_row[i] for i in todo],
            system_prompt=system_prompt,
            base_dir=storage.image_base,
            desc=desc,
            on_result=keep,
        )
    for i, result in zip(todo, asked, strict=True):
        results[i] = result
    return results  # type: ignore[return-value]
