"""SLIM beyond noise? Each rationale row of a finished run against item text and the controls.

Reads the current recommender results of a run that `slim run` finished (nothing is trained
here) and states every `+student` (SLIM) and `+teacher` row against `item_text`, `+zeros` (the
fusion with zero vectors) and `+history` (the fusion with the mean history text, no LLM), in
NDCG@10 points and in units of the seeds' standard deviation pooled over the two rows. Issue 25
asks for a gain of more than 2 sigma over 5 seeds against both item text and the control.

    SLIM_RECOMMENDER__MODELS='[sasrec]' SLIM_RECOMMENDER__SEEDS='[1, 2, 3, 4, 5]' \\
        slim run -c configs/ml-100k.yaml
    SLIM_RECOMMENDER__MODELS='[sasrec]' SLIM_RECOMMENDER__SEEDS='[1, 2, 3, 4, 5]' \\
        python benchmarks/slim_signal.py --config configs/ml-100k.yaml --dataset ml-100k

The SLIM row with selected distillation data comes from a second run (`--selected-config`): the
same configuration with `student.select` set, its own student, and only the `+student` runs
trained; its rows are stated against the first run's references (same data, seeds and settings).

Rows merge into `benchmarks/results/slim_signal.json` by (dataset, model, variant, protocol,
filter); `filter` is the student's `student.select` ("none" for teacher rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import merge_rows  # benchmarks/harness.py

from slim_core.config import SlimConfig, load_config
from slim_core.rec.pipeline import load_recommender_result
from slim_core.report import SIGNAL_REFERENCES, signal_rows

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "slim_signal.json"


def _rows(config: SlimConfig) -> list[dict]:
    result = load_recommender_result(config)
    if result is None:
        raise SystemExit(f"{config.run.output_dir}: no recommender results; run the pipeline")
    return result.rows


def _is_student(row: dict) -> bool:
    return row["variant"].endswith("+student")


def _seeds(rows: list[dict]) -> list[int]:
    return sorted({r["seed"] for r in rows if r["seed"] is not None})


def _signal(rows: list[dict], head: dict, student_filter: str) -> list[dict]:
    out = []
    for protocol in ("full", "sampled"):
        for row in signal_rows(rows, protocol):
            rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
            filter_ = student_filter if _is_student(row) else "none"
            out.append({**head, "protocol": protocol, "filter": filter_, **rounded})
    return out


def rows_for(config_path: Path, dataset: str, selected_path: Path | None = None) -> list[dict]:
    config = load_config(config_path)
    rows = _rows(config)
    head = {"dataset": dataset, "seeds": _seeds(rows)}
    out = _signal(rows, head, config.student.select if config.student else "none")
    if selected_path is not None:
        selected = load_config(selected_path)
        students = [r for r in _rows(selected) if _is_student(r)]
        if _seeds(students) != head["seeds"]:
            raise SystemExit(f"{selected_path}: seeds {_seeds(students)}, not {head['seeds']}")
        references = [r for r in rows if not _is_student(r)]
        # The first run's latest results are read: a later run of another model leaves the
        # students without references, and their rows without a comparison.
        missing = {r["model"] for r in students} - {r["model"] for r in references}
        if missing:
            raise SystemExit(
                f"{config.run.output_dir}: its latest recommender results hold no "
                f"{sorted(missing)} references for {selected_path}; rerun its `slim run`"
            )
        arm = _signal(references + students, head, selected.student.select)
        out += [r for r in arm if _is_student(r)]
    return out


def _key(row: dict) -> tuple:
    return (row["dataset"], row["model"], row["variant"], row["protocol"], row["filter"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="a config whose run finished")
    parser.add_argument("--dataset", required=True, help="the name the rows carry, e.g. ml-100k")
    parser.add_argument(
        "--selected-config",
        type=Path,
        help="the same run with student.select set and only its +student runs trained",
    )
    args = parser.parse_args()
    rows = rows_for(args.config, args.dataset, args.selected_config)
    merged = merge_rows(RESULTS, rows, _key)
    names = {"item_text": "item text", "zeros": "+ zeros", "history": "+ history"}
    print(
        "| dataset | protocol | model | variant | filter | seeds | NDCG@10 | "
        + " | ".join(f"vs {names[r]}" for r in SIGNAL_REFERENCES)
        + " |"
    )
    print("|---|---|---|---|---|---:|---|" + "---|" * len(SIGNAL_REFERENCES))
    for r in merged:
        cells = []
        for reference in SIGNAL_REFERENCES:
            difference, sigmas = r.get(f"vs_{reference}"), r.get(f"vs_{reference}_sigmas")
            if difference is None:
                cells.append("—")
            else:
                cells.append(
                    f"{difference:+.2f}" + ("" if sigmas is None else f" ({sigmas:+.1f} σ)")
                )
        print(
            f"| {r['dataset']} | {r['protocol']} | {r['model']} | {r['variant']} | "
            f"{r['filter']} | "
            f"{len(r['seeds'])} | {r['ndcg10']:.2f} ± {r['ndcg10_std']:.2f} | {' | '.join(cells)} |"
        )


if __name__ == "__main__":
    main()
