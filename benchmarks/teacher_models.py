"""Teacher models side by side: the same prompts, each model's rationales scored zero-shot.

For each model, a copy of the configuration with only that teacher (same data, users, cutoffs
and decoding) runs `slim teacher run` into a run folder of its own, then
`rationale_quality.py --encode` scores its rationales (full text and step 3) beside the no-LLM
controls and adds the rows to `benchmarks/results/rationale_quality.json`. The configuration's
own teacher model reuses the configuration's run folder, whose answers are cached.

    python benchmarks/teacher_models.py --config configs/ml-100k.yaml --dataset ml-100k \\
        --models qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct --dtype auto
    python benchmarks/teacher_models.py --config configs/ml-100k.yaml --dataset ml-100k \\
        --models qwen2.5-coder-0.5b-instruct --dtype auto --prompt-version teacher-v3

Issue 25 asks for 64 users of ml-100k and of Scientific (both configurations' `teacher.users`).
Seconds per answer come from the rationale files: measured when each answer was generated, so
only answers generated on an otherwise idle machine are a speed figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml
from harness import slim  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent


def teacher_config(
    config_path: Path, model: str, folder: Path, dtype: str | None, prompt: str | None
) -> Path:
    """`config_path` with teacher `model` only, writing into `folder`; the same path back when
    `model` is already the configuration's teacher (in the same dtype and prompt)."""
    config = yaml.safe_load(config_path.read_text())
    same_dtype = dtype is None or config["teacher"].get("dtype", "float32") == dtype
    same_prompt = prompt is None or config["teacher"].get("prompt_version", "teacher-v2") == prompt
    if config["teacher"]["model"] == model and same_dtype and same_prompt:
        return config_path
    if dtype is not None:
        config["teacher"]["dtype"] = dtype
    if prompt is not None:
        config["teacher"]["prompt_version"] = prompt
    config["run"] = {**config.get("run", {}), "name": f"{config['run']['name']}-{model}"}
    config["run"]["output_dir"] = str(folder)
    config["teacher"]["model"] = model
    config.pop("student", None)
    config["recommender"]["rationales"] = ["teacher"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="a data set's configuration")
    parser.add_argument("--dataset", required=True, help="the name the rows carry, e.g. ml-100k")
    parser.add_argument("--models", nargs="+", required=True, help="shipped teacher models")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="where run folders go")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "auto"],
        help="teacher.dtype for every model (default: the configuration's); auto is bfloat16 "
        "where the CPU has AVX512-BF16 or AMX",
    )
    parser.add_argument(
        "--prompt-version",
        choices=["teacher-v2", "teacher-v3"],
        help="teacher.prompt_version for every model (default: the configuration's)",
    )
    args = parser.parse_args()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for model in args.models:
        suffix = f"-{args.dtype}" if args.dtype else ""
        suffix += f"-{args.prompt_version}" if args.prompt_version else ""
        folder = args.runs / f"{args.dataset}-teacher-{model}{suffix}"
        config = teacher_config(args.config, model, folder, args.dtype, args.prompt_version)
        print(f"== {model}: {config}", flush=True)
        slim("teacher", "run", "-c", str(config))
        quality = ROOT / "benchmarks" / "rationale_quality.py"
        command = [sys.executable, str(quality), "--config", str(config)]
        subprocess.run([*command, "--dataset", args.dataset, "--encode"], env=env, check=True)


if __name__ == "__main__":
    main()
