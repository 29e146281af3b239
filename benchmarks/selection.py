"""Selected distillation data against none, at the same teacher cost: the student's zero-shot
NDCG@10 at validation targets.

Each arm fine-tunes the configuration's student on the very same teacher answers (copied from the
configuration's finished run folder: nothing new is asked); `student.select` only decides which
answers at training cutoffs it learns from. Each fine-tuned student then writes a rationale at
the validation cutoff for the first `--users` users, through the real CLI
(`slim student run`), and every rationale of a user the teacher never saw is scored zero-shot
against the validation item (slim_core/rationale_score.py), beside the no-LLM controls on the
same pairs. The teacher's own users are left out: their validation answers were training pairs.

    python benchmarks/selection.py --config configs/ml-100k.yaml --dataset ml-100k --users 256

`--finished` scores the students of whole runs instead (each run's saved `config.yaml`, one
per `student.select`, sharing the teacher's answers: the Scientific sample of docs/results.md),
at every cutoff they wrote, the teacher's users again left out; nothing is fine-tuned.

Writes `benchmarks/results/selection.json` and adds a `student` row per filter (and the
`history` control) to `benchmarks/results/rationale_quality.json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from harness import markdown_table, merge_rows, slim  # benchmarks/harness.py
from rationale_quality import RESULTS as QUALITY
from rationale_quality import _key, encode_run, three_step_share

from slim_core.config import SlimConfig, load_config
from slim_core.llm.transformers_local import resolve_dtype
from slim_core.rationale_score import run_items, score_run
from storage import RunFolder

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "selection.json"
# Content-keyed stage folders an arm can reuse from the configuration's run: the data, the item
# vectors, the teacher's answers and (for the arm that selects nothing) the fine-tuned student.
REUSED = ("data", "encode", "teacher", "student/sft")


def arm_config(config_path: Path, selection: str, users: int, folder: Path) -> Path:
    """`config_path` with `student.select: selection`, student rationales for the first `users`
    users at the validation cutoff only, written into `folder` (seeded from the original run)."""
    config = yaml.safe_load(config_path.read_text())
    source = Path(load_config(config_path).run.output_dir).resolve()  # relative to the cwd
    config["run"] = {**config["run"], "name": f"{config['run']['name']}-select-{selection}"}
    config["run"]["output_dir"] = str(folder)
    config["student"] |= {"select": selection, "users": users, "cutoffs": ["valid"]}
    config["recommender"]["rationales"] = ["teacher"]  # no recommender reads these rationales
    for name in REUSED:
        if (source / name).is_dir() and not (folder / name).exists():
            # hard links: stage folders are written once, by rename, and never in place
            shutil.copytree(source / name, folder / name, copy_function=os.link)
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def teacher_answers(config_path: Path) -> list[int]:
    """The user_idx of each of the run's teacher answers."""
    from slim_core.teacher.stage import teacher_folder

    path = teacher_folder(load_config(config_path)) / "teacher_rationales.parquet"
    return pq.read_table(path, columns=["user_idx"]).column("user_idx").to_pylist()


def training_pairs(config: SlimConfig) -> int | None:
    """How many pairs the arm's student was fine-tuned on (its training.json)."""
    import json

    from slim_core.student.stage import current_student

    training = current_student(config).folder / "training.json"
    return json.loads(training.read_text())["train_pairs"] if training.is_file() else None


def score(config: SlimConfig, excluded: set[int]) -> dict:
    """Zero-shot rows of the arm's student rationales and the controls, teacher users left out."""
    run = RunFolder(config.run.output_dir)
    users = {int(u) for u in run_items(run)[0].user_idx.tolist()} - excluded
    rows = score_run(run, {"student": config.student.max_history_items}, users)
    return {row.part: row for row in rows}


def arm_path(args: argparse.Namespace, selection: str) -> Path:
    """Fine-tune the arm's student and write its rationales; the arm's configuration."""
    folder = args.runs / f"{args.dataset}-select-{selection}"
    config = arm_config(args.config, selection, args.users, folder)
    print(f"== student.select {selection}: {config}", flush=True)
    slim("student", "run", "-c", str(config))
    encode_run(config)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, help="a config whose run finished (the arms' source)"
    )
    parser.add_argument("--dataset", required=True, help="the name the rows carry, e.g. ml-100k")
    parser.add_argument("--users", type=int, default=256, help="the first N users are scored")
    parser.add_argument(
        "--filters", nargs="+", default=["none", "top_fraction"], help="student.select values"
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="where run folders go")
    parser.add_argument(
        "--finished", type=Path, nargs="+", help="configs of finished runs to score (see above)"
    )
    args = parser.parse_args()
    if not (args.config or args.finished):
        parser.error("give --config (fine-tune the arms) or --finished (score finished runs)")
    answers = teacher_answers(args.finished[0] if args.finished else args.config)
    excluded = set(answers)
    rows, quality_rows = [], []
    for config in args.finished or [arm_path(args, selection) for selection in args.filters]:
        arm = load_config(config)
        selection = arm.student.select
        scores = score(arm, excluded)
        full = scores["full"]
        student = arm.student
        rows.append(
            {
                "dataset": args.dataset,
                "filter": selection,
                "teacher_answers": len(answers),
                "train_pairs": training_pairs(arm),
                "users": full.users,
                "ndcg10_zero_shot": round(full.ndcg10, 2),
                "hit10_zero_shot": round(full.hit10, 2),
                "ndcg10_step3": round(scores["step3"].ndcg10, 2) if "step3" in scores else None,
                "ndcg10_history": round(scores["history"].ndcg10, 2),
                "ndcg10_last_item": round(scores["last_item"].ndcg10, 2),
            }
        )
        common = {"dataset": args.dataset, "users": full.users, "rationales": full.rationales}
        quality_rows.append(
            common
            | {
                "source": "student",
                "model": student.base_model,
                "filter": selection,
                "dtype": resolve_dtype(student.dtype),
                "prompt": arm.teacher.prompt_version,  # what the student learnt from
                "ndcg10_zero_shot": round(full.ndcg10, 2),
                "three_step_share": three_step_share(RunFolder(arm.run.output_dir), "student"),
                "ndcg10_step3": rows[-1]["ndcg10_step3"],
            }
        )
    quality_rows.append(
        common
        | {
            "source": "history",
            "model": None,
            "filter": "none",
            "dtype": None,
            "prompt": None,
            "ndcg10_zero_shot": rows[-1]["ndcg10_history"],
            "three_step_share": None,
        }
    )
    merge_rows(QUALITY, quality_rows, _key)
    merged = merge_rows(RESULTS, rows, lambda r: (r["dataset"], r["filter"], r["users"]))
    header = ["dataset", "filter", "train pairs", "users", "zero-shot NDCG@10", "step 3"]
    header += ["history", "last item"]
    table = [
        [r["dataset"], r["filter"], r["train_pairs"], r["users"], f"{r['ndcg10_zero_shot']:.2f}"]
        + [r["ndcg10_step3"], f"{r['ndcg10_history']:.2f}", f"{r['ndcg10_last_item']:.2f}"]
        for r in merged
    ]
    print(markdown_table(header, table, numeric_from=2))


if __name__ == "__main__":
    main()
