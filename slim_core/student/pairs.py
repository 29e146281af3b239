"""Distillation pairs: the student prompt for a (user, cutoff) -> the teacher's rationale.

The student never sees the teacher's long prompt; it gets the short student template over the
same history (the paper's setup) and learns to answer with the teacher's three steps, written
in one normalised form so that it also learns the output contract. A slice of users is held out
(by a hash of the user, so the split is stable as more teacher answers arrive) to measure the
student before and after fine-tuning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from slim_core.config import StudentConfig
from slim_core.data import DataStageResult
from slim_core.errors import DataError
from slim_core.prompts import STUDENT_VERSION, build_prompt
from slim_core.rec.data import load_sequence_data
from slim_core.teacher.stage import item_table
from storage import canonical_hash

WORD = re.compile(r"\S+")
MARKDOWN = re.compile(r"[*_`#]+")
LIST_MARK = re.compile(r"(?m)^\s*(?:[-+•]|\d{1,2}[.)])\s+")
LINE_END = re.compile(r"[.,;:!?]$")


@dataclass(frozen=True)
class Pair:
    user_idx: int
    cutoff: int
    prompt: str
    completion: str
    heldout: bool


def first_words(text: str, limit: int | None) -> str:
    """The text up to and including its `limit`-th word, line breaks kept (None: all of it)."""
    text = text.strip()
    if limit is None:
        return text
    words = list(WORD.finditer(text))
    return text if len(words) <= limit else text[: words[limit - 1].end()].rstrip(",;:")


def plain_text(text: str) -> str:
    """One line of prose: markdown marks and list bullets dropped, lines joined ('; ' after a
    line without closing punctuation, so list entries stay apart)."""
    lines = [
        " ".join(line.split()) for line in LIST_MARK.sub("", MARKDOWN.sub("", text)).split("\n")
    ]
    joined = ""
    for line in filter(None, lines):
        joined += ("" if not joined else " " if LINE_END.search(joined) else "; ") + line
    return joined


def rationale_text(
    step1: str, step2: str, step3: str, step_words: int | None = None, plain: bool = False
) -> str:
    """The one answer format the student learns (and its parser reads back)."""
    steps = (plain_text(s) if plain else s for s in (step1, step2, step3))
    step1, step2, step3 = (first_words(s, step_words) for s in steps)
    return f"Step 1: {step1}\nStep 2: {step2}\nStep 3: {step3}"


def is_heldout(user_idx: int, fraction: float) -> bool:
    bucket = int(canonical_hash(["heldout", user_idx], 8), 16) / 16**8
    return bucket < fraction


def distillation_pairs(
    cfg: StudentConfig,
    data: DataStageResult,
    teacher_rationales: Path,
    domain: str = "products",
) -> list[Pair]:
    """One pair per parsed teacher answer (student prompts in `domain`'s words); raises when
    there are too few to train on."""
    if not Path(teacher_rationales).is_file():
        raise DataError(
            "no teacher rationales: run the teacher stage first (`slim teacher run`)",
            path=teacher_rationales,
        )
    rows = duckdb.sql(
        "SELECT user_idx, cutoff, step1, step2, step3 FROM read_parquet(?) "
        "WHERE step1 <> '' AND step2 <> '' AND step3 <> '' ORDER BY user_idx, cutoff",
        params=[str(teacher_rationales)],
    ).fetchall()
    if len(rows) < cfg.min_pairs:
        raise DataError(
            f"only {len(rows)} teacher rationale(s) with all three steps; the student needs at "
            f"least {cfg.min_pairs} (student.min_pairs): ask the teacher for more users",
            path=teacher_rationales,
        )
    sequences = load_sequence_data(data.folder)
    row_of = {int(u): n for n, u in enumerate(sequences.user_idx)}
    items = item_table(data)
    pairs = []
    for user_idx, cutoff, step1, step2, step3 in rows:
        if user_idx not in row_of:
            raise DataError(
                f"teacher rationale for user_idx {user_idx}, which the data stage does not have "
                "(were the rationales made from other data?)",
                path=teacher_rationales,
            )
        prompt = build_prompt(
            user_idx,
            sequences.sequences[row_of[user_idx]],
            cutoff,
            items,
            version=STUDENT_VERSION,
            domain=domain,
            max_items=cfg.max_history_items,
            token_budget=cfg.token_budget,
        )
        pairs.append(
            Pair(
                user_idx,
                cutoff,
                prompt.text,
                rationale_text(step1, step2, step3, cfg.step_words, cfg.plain_steps),
                is_heldout(user_idx, cfg.heldout_fraction),
            )
        )
    if cfg.heldout_fraction > 0 and all(not p.heldout for p in pairs):
        pairs[-1] = replace(pairs[-1], heldout=True)  # at least one to measure
    return pairs
