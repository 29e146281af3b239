"""Rationale quality of finished runs: each source's zero-shot NDCG@10 and three-step share.

Reads run folders that `slim run` finished (nothing is generated or encoded here) and scores
every rationale with `slim_core.rationale_score`: the rationale's vector ranks all items by
cosine to the item text vectors, the user's history excluded, and the target is the item at the
rationale's cutoff. The `history` row is the no-LLM control on the student's pairs (the
teacher's in a run without a student): the mean text vector of the history items its prompts
showed. Rows merge into
`benchmarks/results/rationale_quality.json` by (dataset, source, model, filter, users), so
measurements from different sessions add up.

    python benchmarks/rationale_quality.py --config configs/demo.yaml --dataset demo
    python benchmarks/rationale_quality.py --config my-teacher-only.yaml --dataset demo --encode

`--encode` first encodes the item texts and the run's teacher / student rationales, for runs
that stopped before the pipeline's encoding stage (e.g. `slim teacher run` with another
teacher model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq
from harness import merge_rows  # benchmarks/harness.py

from slim_core.config import load_config
from slim_core.llm.transformers_local import resolve_dtype
from slim_core.rationale_score import score_run, shown_history_items
from storage import RunFolder

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rationale_quality.json"


def three_step_share(run: RunFolder, source: str) -> float | None:
    """Share of the source's current rationales that parsed into three steps."""
    stage = run.current(f"rationale-vectors-{source}")
    if stage is None:
        return None
    step3 = pq.read_table(stage.file("step3.parquet"), columns=["vector"]).column("vector")
    return round(1 - step3.null_count / max(1, len(step3)), 4)


def encode_run(config_path: Path) -> None:
    """Item vectors and rationale vectors of a run that stopped before its encoding stage."""
    from slim_core.data import prepare_data
    from slim_core.encoding import TextEncoder
    from slim_core.rationale_vectors import encode_rationales
    from slim_core.rec.pipeline import encode_stage
    from slim_core.student.stage import student_folder
    from slim_core.teacher.stage import teacher_folder

    config = load_config(config_path)
    encode_stage(config, prepare_data(config))
    encoder = TextEncoder.from_config(config.encoder)
    files = {}
    if config.teacher is not None:
        files["teacher"] = teacher_folder(config) / "teacher_rationales.parquet"
    if config.student is not None:
        files["student"] = student_folder(config) / "student_rationales.parquet"
    for source, path in files.items():
        if path.is_file():
            encode_rationales(source, path, RunFolder(config.run.output_dir), encoder)


def seconds_per_answer(config, source: str) -> float | None:
    """Median generation seconds an answer (batched answers share their batch's time), as the
    rationale file recorded them when they were generated: the median, so that one batch slowed
    by other work on the machine does not move it."""
    import statistics

    from slim_core.student.stage import student_folder
    from slim_core.teacher.stage import teacher_folder

    folder = teacher_folder(config) if source == "teacher" else student_folder(config)
    path = folder / f"{source}_rationales.parquet"
    if not path.is_file():
        return None
    latency = pq.read_table(path, columns=["latency_s"]).column("latency_s").to_pylist()
    seconds = [s for s in latency if s is not None]
    return round(statistics.median(seconds), 2) if seconds else None


def rows_for(config_path: Path, dataset: str) -> list[dict]:
    config = load_config(config_path)
    run = RunFolder(config.run.output_dir)
    models = {
        "teacher": config.teacher.model if config.teacher else None,
        "student": config.student.base_model if config.student else None,
    }
    filters = {"teacher": "none", "student": config.student.select if config.student else None}
    dtypes = {
        "teacher": resolve_dtype(config.teacher.dtype) if config.teacher else None,
        "student": resolve_dtype(config.student.dtype) if config.student else None,
    }
    prompts = {
        "teacher": config.teacher.prompt_version if config.teacher else None,
        "student": config.teacher.prompt_version if config.teacher else None,  # what it learnt
    }
    scores = score_run(run, shown_history_items(config))
    step3 = {s.source: s.ndcg10 for s in scores if s.part == "step3"}
    # the no-LLM control on the student's pairs, or the teacher's in a run without a student
    control_source = "student" if any(s.source == "student" for s in scores) else "teacher"
    rows = []
    for score in scores:
        if score.part == "full":
            source = score.source
            row = {"model": models[source], "filter": filters[source], "dtype": dtypes[source]}
            row["prompt"] = prompts[source]
            row["three_step_share"] = three_step_share(run, source)
            row["ndcg10_step3"] = round(step3[source], 2) if source in step3 else None
            row["seconds_per_answer"] = seconds_per_answer(config, source)
        elif score.part == "history" and score.source == control_source:
            source = "history"
            row = {"model": None, "filter": "none", "dtype": None, "three_step_share": None}
            row["prompt"] = None
        else:
            continue
        rows.append(
            {
                "dataset": dataset,
                "source": source,
                "users": score.users,
                "rationales": score.rationales,
                "ndcg10_zero_shot": round(score.ndcg10, 2),
                **row,
            }
        )
    return rows


def _key(row: dict) -> tuple:
    """Rows replace earlier ones of the same measurement: the history control differs by the
    pairs it was scored on, hence the user count in the key."""
    # float32 rows from before the dtype was recorded count as float32
    dtype = row.get("dtype") or ("float32" if row["model"] else None)
    # rows from before the prompt was recorded were all asked with teacher-v2
    prompt = row.get("prompt") or ("teacher-v2" if row["model"] else None)
    key = (row["dataset"], row["source"], row["model"], row["filter"], row["users"], dtype)
    return (*key, prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="a config whose run finished")
    parser.add_argument("--dataset", required=True, help="the name the rows carry, e.g. ml-100k")
    parser.add_argument(
        "--encode", action="store_true", help="encode items and rationales first (see above)"
    )
    args = parser.parse_args()
    if args.encode:
        encode_run(args.config)
    rows = rows_for(args.config, args.dataset)
    merged = merge_rows(RESULTS, rows, _key)
    print(
        "| dataset | source | model | dtype | prompt | filter | users | rationales "
        "| zero-shot NDCG@10 | step 3 | three steps | s / answer |"
    )
    print("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in merged:
        share = "—" if r["three_step_share"] is None else f"{100 * r['three_step_share']:.0f}%"
        step3, seconds = r.get("ndcg10_step3"), r.get("seconds_per_answer")
        print(
            f"| {r['dataset']} | {r['source']} | {r['model'] or '—'} | {r.get('dtype') or '—'} | "
            f"{r.get('prompt') or ('teacher-v2' if r['model'] else '—')} | {r['filter']} | "
            f"{r['users']} | {r['rationales']} | {r['ndcg10_zero_shot']:.2f} | "
            f"{'—' if step3 is None else f'{step3:.2f}'} | {share} | "
            f"{'—' if seconds is None else f'{seconds:.1f}'} |"
        )


if __name__ == "__main__":
    main()
