"""Benchmark the order student prompts are generated in: user by user vs shortest user first.

Why this exists: the student stage cuts shards and batches from the order of its prompt list,
and a batch decodes against a cache padded to its longest prompt. `student_prompts` puts users
with similar prompt lengths together (`by_prompt_length`); this measures what that saves on the
demo's student settings, against the users in id order, on the same prompts and model.

Prompts: the demo config's student section (its users, cutoffs, shards and batch size). Model: a
folder (e.g. a run's fine-tuned `student/sft/<hash>/merged`) or the shipped base model. The two
orders alternate `--repeats` times in one process, so drift on a noisy machine hits both.

    python benchmarks/student_order.py [--model FOLDER] [--users 60] [--repeats 2]

Writes `benchmarks/results/student_order.json`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import write_results  # benchmarks/machine.py
from student import demo_values  # benchmarks/student.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the shipped base student)")
    parser.add_argument("--users", type=int, help="users (default: the demo config's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="student_order.json", help="file under results/")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from slim_core.config import config_from_dict
    from slim_core.data.stage import prepare_data
    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.model_files import dequantised_folder
    from slim_core.student.inference import decoding, student_prompts

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    values = demo_values(tempfile.mkdtemp(prefix="slim-bench-order-"))
    if args.users:
        values["student"]["users"] = args.users
    config = config_from_dict(values)
    cfg = config.student
    data = prepare_data(config)
    by_length = [prompt for _, prompt in student_prompts(cfg, data, config.data.domain)]
    by_user = sorted(by_length, key=lambda p: p.user_idx)  # stable: cutoff order kept
    per_shard = cfg.shard_users * len(cfg.cutoffs)

    model = args.model or str(dequantised_folder(cfg.base_model))
    backend = TransformersBackend(model, batch_size=cfg.inference_batch_size, dtype=cfg.dtype)
    backend.load()
    lengths = [len(backend._tokenizer(backend.format(p.text))["input_ids"]) for p in by_user]
    settings = decoding(cfg)
    backend.generate([by_user[0].text], settings)  # warm-up

    def run(prompts) -> tuple[float, dict[str, str]]:
        started, answers = time.perf_counter(), {}
        for start in range(0, len(prompts), per_shard):  # shard by shard, as the stage does
            shard = prompts[start : start + per_shard]
            outs = backend.generate([p.text for p in shard], settings)
            for prompt, out in zip(shard, outs, strict=True):
                answers[prompt.text] = getattr(out, "text", None)
        return time.perf_counter() - started, answers

    seconds: dict[str, list[float]] = {"users in id order": [], "shortest user first": []}
    answers: dict[str, dict[str, str]] = {}
    for repeat in range(args.repeats):
        for name, prompts in (("users in id order", by_user), ("shortest user first", by_length)):
            took, answers[name] = run(prompts)
            seconds[name].append(took)
            print(f"repeat {repeat + 1}: {name}: {took:.1f} s", flush=True)

    same = sum(
        answers["users in id order"][p.text] == answers["shortest user first"][p.text]
        for p in by_user
    )
    baseline = statistics.median(seconds["users in id order"])
    rows = [
        {
            "order": name,
            "prompts": len(by_user),
            "seconds": runs,
            "median_s": statistics.median(runs),
            "s_per_rationale": statistics.median(runs) / len(by_user),
            "speedup": baseline / statistics.median(runs),
        }
        for name, runs in seconds.items()
    ]
    print(
        f"\n{len(by_user)} prompts ({cfg.users} users x {cfg.cutoffs}), prompt tokens "
        f"{min(lengths)}-{max(lengths)} (mean {statistics.mean(lengths):.0f}), shards of "
        f"{per_shard}, batches of {cfg.inference_batch_size}, {backend.dtype}"
    )
    print("\n| order | prompts | seconds (each repeat) | median s/rationale | vs id order |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        runs = " / ".join(f"{s:.1f}" for s in r["seconds"])
        print(
            f"| {r['order']} | {r['prompts']} | {runs} | {r['s_per_rationale']:.3f} | "
            f"{r['speedup']:.2f}x |"
        )
    print(f"\nidentical answers in both orders: {same} of {len(by_user)}")
    write_results(
        RESULTS / args.output,
        {
            "model": model,
            "dtype": backend.dtype,
            "users": cfg.users,
            "cutoffs": cfg.cutoffs,
            "shard_prompts": per_shard,
            "batch_size": cfg.inference_batch_size,
            "prompt_tokens": {
                "min": min(lengths),
                "mean": statistics.mean(lengths),
                "max": max(lengths),
            },
            "identical_answers": same,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
