"""Benchmark the student's fine-tuning step on a CPU: how the loss is computed decides its speed.

Why this exists: fine-tuning is the largest stage of the demo on a CPU. TRL scores the rationale
tokens through a fused, tiled LM head (fast with Triton on GPUs, a slow torch fallback without);
the model's own loss runs the head and a log-softmax over every prompt and padding position; the
shipped CPU trainer reads the head at the rationale tokens only. All three must give the same
losses; this measures what each costs.

Pairs: the demo's teacher rationales (run `slim run -c configs/demo.yaml` first, or pass
`--teacher-rationales` from another run of the demo config). Each loss runs in its own
process, in a row, for the first `--steps` steps with the demo's seed and settings.

    python benchmarks/finetune.py                                  # fused, full, rationale
    python benchmarks/finetune.py --losses full rationale --steps 5

Writes `benchmarks/results/finetune.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
LOSSES = {
    "fused": "TRL's fused LM head (its default; GPUs keep it)",
    "full": "the model's own cross-entropy over full logits",
    "rationale": "LM head read at the rationale tokens only (shipped on CPUs)",
}


def child(loss: str, steps: int, lora_dropout: float, rationales: Path, out: Path) -> dict:
    """One fine-tuning run in this process; returns step times, losses and peak RSS."""
    import shutil
    from unittest import mock

    from data_stage import peak_rss_mb  # this script's folder is on sys.path
    from transformers import TrainerCallback

    import slim_core.student.sft as sft
    from slim_core.config import load_config
    from slim_core.data.stage import prepare_data
    from slim_core.student.pairs import distillation_pairs
    from slim_core.student.stage import base_model

    config = load_config(ROOT / "configs" / "demo.yaml")
    config = config.model_copy(
        update={"run": config.run.model_copy(update={"output_dir": out / "run"})}
    )
    data = prepare_data(config)
    cfg = config.student.model_copy(
        update={"max_steps": steps, "save_steps": 10_000, "lora_dropout": lora_dropout}
    )
    pairs = distillation_pairs(cfg, data, rationales, config.data.domain)
    base, gguf_file = base_model(cfg)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    shutil.rmtree(out / "sft", ignore_errors=True)
    trainer_class = sft.sft_trainer_class
    head = sft.rationale_token_loss
    with (
        mock.patch.object(
            sft, "sft_trainer_class", lambda fused_loss: trainer_class(loss == "fused")
        ),
        mock.patch.object(
            sft, "rationale_token_loss", head if loss == "rationale" else lambda *a, **k: None
        ),
    ):
        result = sft.finetune(
            pairs,
            cfg,
            base,
            out / "sft",
            gguf_file=gguf_file,
            seed=config.run.seed,
            callbacks=[timer],
        )
    return {
        "loss": loss,
        "lora_dropout": lora_dropout,
        "step_seconds": timer.seconds,
        "losses": [loss_value for _, loss_value in result.losses],
        "peak_rss_mb": round(peak_rss_mb()),
        "train_pairs": sum(not p.heldout for p in pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", nargs="+", choices=sorted(LOSSES), default=list(LOSSES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument(
        "--teacher-rationales",
        type=Path,
        default=ROOT / "runs" / "demo" / "teacher" / "teacher_rationales.parquet",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path("/tmp/slim-bench-finetune")
    if args.child:
        result = child(args.child, args.steps, args.lora_dropout, args.teacher_rationales, out)
        print("RESULT " + json.dumps(result))
        return
    if not args.teacher_rationales.is_file():
        sys.exit(
            f"{args.teacher_rationales}: no teacher rationales; run the demo first "
            "(`slim run -c configs/demo.yaml`) or pass --teacher-rationales"
        )
    runs = []
    for loss in args.losses:
        command = [sys.executable, __file__, "--child", loss, "--steps", str(args.steps),
                   "--lora-dropout", str(args.lora_dropout),
                   "--teacher-rationales", str(args.teacher_rationales)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{loss}: the run failed\n{done.stderr[-3000:]}")
        runs.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"{loss}: {sum(runs[-1]['step_seconds']):.1f} s", flush=True)
    first = sum(runs[0]["step_seconds"])
    print(f"\n| loss | {args.steps} steps, s | vs {runs[0]['loss']} | peak RSS MB | losses |")
    print("|---|---:|---:|---:|---|")
    for run in runs:
        total = sum(run["step_seconds"])
        losses = " ".join(f"{value:.4f}" for value in run["losses"])
        print(f"| {LOSSES[run['loss']]} | {total:.1f} | {first / total:.2f}x | "
              f"{run['peak_rss_mb']} | {losses} |")  # fmt: skip
    same = all(
        abs(a - b) <= 1e-3 * abs(b)
        for run in runs[1:]
        for a, b in zip(run["losses"], runs[0]["losses"], strict=True)
    )
    print(f"\nsame losses (to 1e-3): {'yes' if same else 'NO'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "finetune.json"
    path.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "python": sys.version,
                },
                "steps": args.steps,
                "runs": runs,
                "same_losses": same,
            },
            indent=1,
        )
    )
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
