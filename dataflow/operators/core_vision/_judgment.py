"""Rollouts judged by a verifier model: the machinery VisionDependentFilter and FailRateFilter share.

A *rollout* serving answers each row's question (with or without its image); a *verifier* serving is then
asked, with DataFlow-MM's OpenCompass grading prompt (:data:`CV_PROMPT`), whether that answer matches the
row's reference answer, and replies with a letter: A correct, B incorrect, C invalid. Both go through
:meth:`VLMServingABC.generate_results`, so a request that fails is a reason on its row, never a crash, and
the requests run at the serving's own concurrency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dataflow.core.row_filter import Verdict
from dataflow.log import get_logger
from dataflow.serving import build_serving
from dataflow.serving.base import VLMResult, VLMServingABC

logger = get_logger("dataflow.judgment")

# DataFlow-MM's dataflow/utils/opencompass_verifier.py, word for word: CompassVerifier was trained on this
# prompt, so any rewording changes its grades. `{{}}` is format()'s escape of `{}`.
CV_PROMPT = (
    "\n"
    "Please as a grading expert, judge whether the final answers given by the candidates below are "
    "consistent with the standard answers, that is, whether the candidates answered correctly. \n"
    "Here are some evaluation criteria:\n"
    "1. Please refer to the given standard answer. You don't need to re-generate the answer to the "
    "question because the standard answer has been given. You only need to judge whether the "
    "candidate's answer is consistent with the standard answer according to the form of the "
    "question. THE STANDARD ANSWER IS ALWAYS CORRECT AND THE QUESTION IS PERFECTLY VALID. NEVER "
    "QUESTION THEM.\n"
    "2. ONLY compare the FINAL ANSWER - COMPLETELY IGNORE any potential errors in the REASONING "
    "PROCESSES.\n"
    "3. Some answers may be expressed in different ways, such as some answers may be a mathematical "
    "expression, some answers may be a textual description, as long as the meaning expressed is the "
    "same. Before making a judgment, please understand the question and the standard answer first, "
    "and then judge whether the candidate's answer is correct.\n"
    "4. Some answers may consist of multiple items, such as multiple-choice questions, "
    "multiple-select questions, fill-in-the-blank questions, etc. Regardless of the question type, "
    "the final answer will be considered correct as long as it matches the standard answer, "
    "regardless of whether the reasoning process is correct. For multiple-select questions and "
    "multi-blank fill-in-the-blank questions, all corresponding options or blanks must be answered "
    "correctly and match the standard answer exactly to be deemed correct.\n"
    "5. If the prediction is given with \\boxed{{}}, please ignore the \\boxed{{}} and only judge "
    "whether the candidate's answer is consistent with the standard answer.\n"
    "6. If the candidate's answer is invalid (e.g., incomplete (cut off mid-response), lots of "
    "unnormal repetitive content, or irrelevant to the question, saying it can't answer the question "
    "because some irresistible factors, like ethical issues, no enough information, etc.), select "
    "option C (INVALID).Please judge whether the following answers are consistent with the standard "
    "answer based on the above criteria. Grade the predicted answer of this new question as one of:\n"
    "A: CORRECT \n"
    "B: INCORRECT\n"
    "C: INVALID\n"
    'Just return the letters "A", "B", or "C", with no text around it.\n'
    "Here is your task. Simply reply with either CORRECT, INCORRECT, or INVALID. Don't apologize or "
    "correct yourself if there was a mistake; we are just trying to grade the answer.\n"
    "<Original Question Begin>:\n"
    "{question}\n"
    "<Original Question End>\n"
    "<Standard Answer Begin>:\n"
    "{gold_answer}\n"
    "<Standard Answer End>\n"
    "<Candidate's Answer Begin>: \n"
    "{llm_response}\n"
    "<Candidate's Answer End>\n"
    "Judging the correctness of the candidate's answer:\n"
)

CORRECT = "A"
WORDS = (("INCORRECT", "B"), ("INVALID", "C"), ("CORRECT", "A"))  # INCORRECT before CORRECT: it contains it
_LEADING_LETTER = re.compile(r"^\(?([A-C])(?![A-Za-z])")


def process_judgment(judgment_str: str) -> str:
    """DataFlow-MM's parser: the last ``boxed{X}``; else the reply itself when it is ``A``, ``B`` or ``C``;
    else, after the last ``Final Judgment:``, the last ``(X`` and then the last capital A, B or C; else ``""``."""
    boxed = re.findall(r"boxed{([A-C])}", judgment_str)
    if boxed:
        return boxed[-1]
    if judgment_str in ("A", "B", "C"):
        return judgment_str
    tail = judgment_str.split("Final Judgment:")[-1]
    for pattern in (r"\(([A-C])\)*", r"([A-C])"):
        found = re.findall(pattern, tail)
        if found:
            return found[-1]
    return ""


def judgment_letter(text: str) -> str:
    """The verifier's grade: ``"A"`` (correct), ``"B"``, ``"C"`` or ``""`` (none found).

    DataFlow-MM's :func:`process_judgment`, except that a reply (after any ``Final Judgment:``) that starts
    with a grade, as a letter (``A``, ``(B)``, ``C: INVALID``) or as the word the prompt asks for
    (``CORRECT``, ``Incorrect.``, ``INVALID``), is that grade. DataFlow-MM's last-capital-letter rule
    reads ``CORRECT`` as C, ``INVALID`` as A and ``A: CORRECT`` as C.
    """
    text = text.strip()
    if re.search(r"boxed{([A-C])}", text) or text in ("A", "B", "C"):
        return process_judgment(text)
    tail = text.split("Final Judgment:")[-1].strip()
    leading = _LEADING_LETTER.match(tail)
    if leading:
        return leading.group(1)
    head = tail.upper()
    for word, letter in WORDS:
        if re.match(rf"{word}\b", head):
            return letter
    return process_judgment(text)


def verifier_prompt(question: str, gold_answer: str, response: str) -> str:
    return CV_PROMPT.format(question=question, gold_answer=gold_answer, llm_response=response)


def text_or_none(value) -> str | None:
    """A cell as text: a non-blank string as it is, a number (an answer ``3``) as its text; None for null,
    blank or anything else (a list, a dict)."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return None if pd.isna(value) else str(value)
    return None


def servings(rollout, verifier) -> tuple[VLMServingABC, VLMServingABC]:
    """Both servings built (a config mapping names its class), with a clear error for anything else."""
    built = []
    for name, spec in (("rollout", rollout), ("verifier", verifier)):
        if spec is None:
            raise ValueError(f"{name} is required: a serving (dataflow.serving) or a mapping naming one")
        if type(spec).__name__ == "ActorHandle":
            raise TypeError(
                f"{name}: a Ray actor handle is not a serving here; pass the serving itself (its own "
                "max_workers / batch_size set how many requests run at once)"
            )
        try:
            built.append(build_serving(spec))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return built[0], built[1]


@dataclass
class Rollouts:
    """Per row: the answers of its rollouts, the verifier's letters, and why it has none (reason, detail)."""

    answers: list[list[str | None]]
    letters: list[list[str]]
    failed: list[tuple[str, str] | None]


def _first_failure(results: list[VLMResult], stage: str) -> tuple[str, str] | None:
    bad = [r for r in results if not r.ok]
    if not bad:
        return None
    first = bad[0]
    if first.image_failed:  # the loader's reason: the row is rejected as any unreadable image is
        return first.reason, first.detail or first.reason
    count = f"; {len(bad)} of {len(results)} {stage} requests failed" if len(results) > 1 else ""
    return first.reason, f"{stage}: {first.detail or first.reason}{count}"


def roll_out_and_verify(
    rollout: VLMServingABC,
    verifier: VLMServingABC,
    *,
    questions: list[str],
    gold: list[str],
    images: list | None,
    n: int,
    system_prompt: str | None,
    base_dir: str | None,
    name: str,
) -> Rollouts:
    """``n`` rollouts of each question (with ``images[i]`` when given), each graded by the verifier.

    A row whose rollouts or gradings are not all answered gets ``failed`` (the first failure's reason and
    detail) and no letters; its other requests are not graded (it cannot be decided either way).
    """
    rows = len(questions)
    prompts = [q for q in questions for _ in range(n)]
    sources = None if images is None else [img for img in images for _ in range(n)]
    answered = rollout.generate_results(
        prompts, sources, system_prompt=system_prompt, base_dir=base_dir, desc=f"{name} rollout"
    )
    per_row = [answered[i * n : (i + 1) * n] for i in range(rows)]
    failed = [_first_failure(results, "rollout") for results in per_row]
    todo = [i for i in range(rows) if failed[i] is None]
    grade_prompts = [verifier_prompt(questions[i], gold[i], r.text) for i in todo for r in per_row[i]]
    graded = verifier.generate_results(
        grade_prompts, None, system_prompt=system_prompt, base_dir=base_dir, desc=f"{name} verifier"
    )
    letters: list[list[str]] = [[] for _ in range(rows)]
    for k, i in enumerate(todo):
        grades = graded[k * n : (k + 1) * n]
        failed[i] = _first_failure(grades, "verifier")
        if failed[i] is None:
            letters[i] = [judgment_letter(g.text) for g in grades]
    answers = [[r.text if r.ok else None for r in results] for results in per_row]
    bad = sum(f is not None for f in failed)
    logger.info("%s: %d of %d row(s) rolled out and graded%s", name, rows - bad, rows, f"; {bad} failed" if bad else "")
    return Rollouts(answers, letters, failed)


def question_rows(
    df: pd.DataFrame, question_key: str, answer_key: str, name: str
) -> tuple[list[str | None], list[str | None], Verdict]:
    """The question and reference answer of each row, and a verdict rejecting the rows that lack one."""
    for key in (question_key, answer_key):
        if key not in df.columns:
            raise KeyError(f"{name}: {key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
    questions = [text_or_none(v) for v in df[question_key].tolist()]
    gold = [text_or_none(v) for v in df[answer_key].tolist()]
    verdict = Verdict.keep_all(len(df))
    verdict.drop(np.array([q is None for q in questions], dtype=bool), "missing_question", f"no {question_key} text")
    verdict.drop(np.array([a is None for a in gold], dtype=bool), "missing_answer", f"no {answer_key} text")
    return questions, gold, verdict


def drop_failed(verdict: Verdict, at: list[int], failed: list[tuple[str, str] | None]) -> None:
    """Reject the rows (positions ``at``) whose requests failed, each with its own reason and detail."""
    details = {pos: failure[1] for pos, failure in zip(at, failed) if failure is not None}
    for reason in dict.fromkeys(failure[0] for failure in failed if failure is not None):
        mask = np.zeros(len(verdict.reason), dtype=bool)
        mask[[pos for pos, failure in zip(at, failed) if failure is not None and failure[0] == reason]] = True
        verdict.drop(mask, reason, lambda hit: [details[int(pos)] for pos in hit])
