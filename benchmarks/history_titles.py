"""How much of a teacher's rationale is the history given back: the share of answers whose
step 3 names an item the prompt listed, and the zero-shot NDCG@10 with those titles masked out.

A small teacher's step 3 mostly recommends items from the history, which full ranking excludes.
If masking the titles lowers the score, what the rationale says about the next item is the
history's own titles (docs/results.md, "Where the signal is lost").

    python benchmarks/history_titles.py runs/ml-100k-teacher-qwen2.5-coder-0.5b-instruct-auto.yaml

Reads a finished teacher run (its configuration as `benchmarks/teacher_models.py` writes it,
item vectors encoded); prints one row, writes nothing.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pyarrow.parquet as pq
import torch

from slim_core.config import load_config
from slim_core.encoding import TextEncoder
from slim_core.rationale_score import run_items, zero_shot_ranks
from slim_core.rec.metrics import metrics_from_ranks
from slim_core.teacher.stage import teacher_folder
from storage import RunFolder

LISTED = re.compile(r"\s*\d+\.\s*(.+?)(\s*\((?:genres|category)|;|$)")  # "3. Title (genres: ..."


def listed_titles(prompt: str) -> list[str]:
    """The titles a prompt's history lines show, and each without its ", The" tail."""
    titles = [m.group(1).strip() for line in prompt.splitlines() if (m := LISTED.match(line))]
    return [t for title in titles for t in {title, title.split(",")[0].strip()} if len(t) > 3]


def masked(text: str, titles: list[str]) -> str:
    for title in sorted(titles, key=len, reverse=True):
        text = re.sub(re.escape(title), " ", text, flags=re.IGNORECASE)
    return text or " "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="a finished teacher run's configuration")
    args = parser.parse_args()
    config = load_config(args.config)
    data, items = run_items(RunFolder(config.run.output_dir))
    rows = pq.read_table(teacher_folder(config) / "teacher_rationales.parquet").to_pylist()
    encoder = TextEncoder.from_config(config.encoder)
    keys = [(r["user_idx"], r["cutoff"]) for r in rows]

    def ndcg(texts: list[str]) -> float:
        ranks = zero_shot_ranks(encoder.encode(texts), keys, data, items)
        return 100 * metrics_from_ranks(torch.as_tensor(ranks), ks=[10])["ndcg@10"]

    titles = [listed_titles(r["prompt"]) for r in rows]
    steps3 = [r["step3"] or " " for r in rows]
    naming = sum(
        any(t.lower() in s.lower() for t in ts) for s, ts in zip(steps3, titles, strict=True)
    )
    print("| run | answers | step 3 names a history item | full | masked | step 3 | masked |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.config.stem} | {len(rows)} | {naming} | {ndcg([r['rationale'] for r in rows]):.2f}"
        f" | {ndcg([masked(r['rationale'], t) for r, t in zip(rows, titles, strict=True)]):.2f}"
        f" | {ndcg(steps3):.2f} | {ndcg([masked(s, t) for s, t in zip(steps3, titles, strict=True)]):.2f} |"
    )


if __name__ == "__main__":
    main()
