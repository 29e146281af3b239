"""A student rationale for every user at the cutoffs the recommenders need.

    prompts = student_prompts(cfg, data)                      # (user, cutoff), history before it
    report = generate_rationales(prompts, backend, folder, cfg)  # shard by shard, resumable
    path = write_student_rationales(prompts, backend.model_id, folder, cfg)

Generation runs in shards of `shard_users` users; each finished shard is one Parquet file in
`<folder>/generations/answers/` (answers) or `.../failures/` (empty or malformed text, kept with
its raw text). Every answer is keyed by (model, template, prompt text, decoding), so a rerun
after a kill generates only what is missing, and new interaction data regenerates exactly the
users whose prompts changed: everyone else's rationale is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from slim_core.config import StudentConfig
from slim_core.data import DataStageResult
from slim_core.llm.base import Decoding, LLMBackend
from slim_core.prompts import STUDENT_VERSION, Prompt, parse_rationale
from slim_core.rec.data import load_sequence_data
from slim_core.student.quality import loops
from slim_core.teacher.cache import AnswerCache, answer_key
from slim_core.teacher.run import TeacherReport, ask_teacher
from slim_core.teacher.stage import history_prompts, item_table
from storage import atomic_path, write_json_atomic

STUDENT_SCHEMA = pa.schema(
    [
        ("user_idx", pa.int32()),
        ("cutoff", pa.int32()),
        ("split", pa.string()),
        ("model", pa.string()),
        ("template_version", pa.string()),
        ("rationale", pa.string()),
        ("step1", pa.string()),
        ("step2", pa.string()),
        ("step3", pa.string()),
        ("tokens_out", pa.int64()),
        ("latency_s", pa.float64()),  # generation seconds per rationale (batch time / batch size)
    ]
)


def decoding(cfg: StudentConfig) -> Decoding:
    return Decoding(
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        repetition_penalty=cfg.repetition_penalty,
        step_tokens=cfg.step_tokens,
    )


def student_prompts(
    cfg: StudentConfig, data: DataStageResult, domain: str = "products"
) -> list[tuple[str, Prompt]]:
    """(split, prompt) for every user (or the first `cfg.users`) at each configured cutoff,
    in `domain`'s words (`data.domain`), in `by_prompt_length` order."""
    sequences = load_sequence_data(data.folder)
    users = sequences.n_users if cfg.users is None else min(cfg.users, sequences.n_users)
    prompts = history_prompts(
        sequences,
        item_table(data),
        range(users),
        cfg.cutoffs,
        version=STUDENT_VERSION,
        max_items=cfg.max_history_items,
        token_budget=cfg.token_budget,
        domain=domain,
        train_lead=cfg.train_cutoff_lead,
    )
    return by_prompt_length(prompts)


def by_prompt_length(split_prompts: list[tuple[str, Prompt]]) -> list[tuple[str, Prompt]]:
    """Users from the shortest longest prompt to the longest; each user's prompts stay together,
    in cutoff order.

    Why: shards and batches are cut from this order, and a batch decodes against a cache padded
    to its longest prompt. Users of similar history length together waste less of it (1.11x on
    the demo's student, more where a shard is a narrow band of lengths; docs/benchmarks.md), and
    a user's prompts at successive cutoffs, which share their history, still share a batch.
    """
    longest: dict[int, int] = {}
    for _, prompt in split_prompts:
        longest[prompt.user_idx] = max(longest.get(prompt.user_idx, 0), len(prompt.text))
    rank = {user: n for n, user in enumerate(sorted(longest, key=lambda u: (longest[u], u)))}
    return sorted(split_prompts, key=lambda pair: rank[pair[1].user_idx])  # stable: cutoff order


@dataclass(frozen=True)
class StudentInferenceResult:
    rationales: Path
    summary: dict[str, Any]


def generate_rationales(
    prompts: list[Prompt], backend: LLMBackend, folder: Path, cfg: StudentConfig
) -> TeacherReport:
    """Generate what is not yet on disk, one shard (file) at a time, with a progress bar."""
    per_shard = cfg.shard_users * len(cfg.cutoffs)
    return ask_teacher(
        prompts,
        backend,
        AnswerCache(folder / "generations"),
        decoding(cfg),
        batch_size=per_shard,
        malformed_retries=0,  # greedy decoding would only repeat itself: record and move on
        skip_failed=True,
        require_steps=False,  # an answer without the steps still describes the user
        progress="student rationales",
    )


def write_student_rationales(
    split_prompts: list[tuple[str, Prompt]],
    model_id: str,
    folder: Path,
    cfg: StudentConfig,
    report: TeacherReport,
) -> StudentInferenceResult:
    """student_rationales.parquet, keyed by (user_idx, cutoff), from the shards on disk."""
    cache = AnswerCache(folder / "generations")
    answers = {row["key"]: row for row in cache.read_answers()}
    failed = {row["key"] for row in cache.dead_letters()}
    params = decoding(cfg).as_dict()
    rows, missing = [], 0
    for split, prompt in split_prompts:
        key = answer_key(model_id, prompt.version, prompt.text, params)
        row = answers.get(key)
        if row is None:
            missing += key not in failed
            continue
        steps = parse_rationale(row["answer"]) or ("", "", "")
        rows.append(
            {
                "user_idx": prompt.user_idx,
                "cutoff": prompt.cutoff,
                "split": split,
                "model": model_id,
                "template_version": prompt.version,
                "rationale": row["answer"],
                "step1": steps[0],
                "step2": steps[1],
                "step3": steps[2],
                "tokens_out": row["tokens_out"],
                "latency_s": row["latency_s"],
            }
        )
    rows.sort(key=lambda row: (row["user_idx"], row["cutoff"]))  # the file in user order
    path = folder / "student_rationales.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=STUDENT_SCHEMA), tmp)
    summary = {
        "prompts": len(split_prompts),
        "rationales": len(rows),
        "failed": len(split_prompts) - len(rows) - missing,
        "not_generated": missing,
        "generated_this_run": report.answered + report.failed,
        "reused": report.cached,
        "with_three_steps": sum(1 for row in rows if row["step1"]),
        "looping": sum(1 for row in rows if loops(row["rationale"])),  # see quality.loops
        "tokens_out": report.tokens_out,
        "model": model_id,
    }
    write_json_atomic(folder / "summary.json", summary)
    return StudentInferenceResult(path, summary)
