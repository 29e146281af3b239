"""Benchmark the project's sequential recommenders on the real data sets (ml-100k, Scientific).

Why this exists: the recommender stage (`slim_core.rec.stage.run_recommenders`) should train
SASRec and GRU4Rec to useful accuracy in minutes on a laptop-class CPU, where a peer library
(RecBole 1.2.1, `/work/shared/BASELINES.md`) needs minutes per epoch. This script runs the whole
stage as shipped on each data set: data stage, item text encoding with the default encoder, then
SASRec and GRU4Rec, each as the `id` and `item_text` variant, over several seeds, plus the
popularity baseline, and evaluates both protocols (full ranking and 100 sampled negatives).

    python benchmarks/recommenders.py                              # both data sets, seeds 1 2 3
    python benchmarks/recommenders.py --datasets ml-100k --seeds 1
    python benchmarks/recommenders.py --max-epochs 2 --seeds 1     # smoke test

Each data set runs in its own subprocess (so peak RSS is per data set: `VmHWM` of the child).
Results go to `benchmarks/results/recommenders_<dataset>.json` (machine, versions, settings,
every metric row, wall time, encoding time, peak RSS) and `recommenders_<dataset>.png` (test
NDCG@10, both protocols). The script prints the results table (test split, mean ± std over
seeds), a per-run timing table, the RecBole per-epoch comparison and PASS/FAIL lines:

(a) ml-100k, SASRec (id): every seed trains in under 5 minutes and the mean test full-ranking
    NDCG@10 is at least 0.0322 (RecBole's SASRec after 2 epochs on this machine); also compared
    with RecBole's GRU4Rec, 0.0481.
(b) Scientific: the item_text variant beats id (mean test full-ranking NDCG@10) per backbone.

A child run (`--child DATASET`) is an internal mode: it runs one data set and hands its raw
result to the parent (benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import machine_info, peak_rss_mb, report_to_parent, run_child  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = {
    "ml-100k": ROOT / "configs" / "ml-100k.yaml",
    "scientific": ROOT / "configs" / "scientific.yaml",
}
TITLES = {"ml-100k": "MovieLens-100K", "scientific": "Amazon Industrial and Scientific"}
# Full ranking with the user's history left among the candidates on ml-100k, as in the RecBole
# reference runs; the project's default (history excluded) on Scientific.
EXCLUDE_HISTORY = {"ml-100k": False, "scientific": True}

MODELS = ["sasrec", "gru4rec"]
VARIANTS = ["id", "item_text"]

# Targets and references (RecBole 1.2.1 on this machine, /work/shared/BASELINES.md).
TARGET_TRAIN_SECONDS = 300.0
RECBOLE_SASREC_NDCG10 = 0.0322  # SASRec after 2 epochs (run 1), test, full ranking
RECBOLE_GRU4REC_NDCG10 = 0.0481  # GRU4Rec, 25 epochs (best 20), test, full ranking
RECBOLE_SECONDS_PER_EPOCH = {"sasrec": (387.0, 503.0), "gru4rec": (72.0, 72.0)}
RECBOLE_TOTAL_SECONDS = {"sasrec": 898.0, "gru4rec": 1860.0}


# ---------------------------------------------------------------------------------------------
# Child: one data set


def load_1min() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def instrument_fit() -> dict[str, dict]:
    """Wrap the stage's `fit` (in this process only) to record each run's CPU time, the load
    average and the per-epoch history. The machine is shared: wall-clock seconds move with other
    people's work, CPU seconds (all threads) much less."""
    import slim_core.rec.stage as stage

    fits: dict[str, dict] = {}
    original = stage.fit

    def timed_fit(*args, **kwargs):
        wall, cpu, load_before = time.perf_counter(), time.process_time(), load_1min()
        result = original(*args, **kwargs)
        fits[kwargs.get("description", "training")] = {
            "wall_seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
            "load_1min_before": load_before,
            "load_1min_after": load_1min(),
            "history": result.history,
        }
        return result

    stage.fit = timed_fit
    return fits


def build_config(dataset: str, args: argparse.Namespace):
    """The data set's YAML with the benchmark's settings written over it."""
    import yaml

    from slim_core.config import config_from_dict

    path = CONFIGS[dataset]
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    values.setdefault("run", {})["output_dir"] = str(args.workdir / dataset)
    values["recommender"] = {
        "models": args.models,
        "variants": args.variants,
        "popularity": True,
        "seeds": args.seeds,
        "loss": "ce",
        "threads": args.threads,
        "patience": args.patience,
        "max_epochs": args.max_epochs,
    }
    values.setdefault("evaluation", {})["exclude_history"] = EXCLUDE_HISTORY[dataset]
    return config_from_dict(values, origin=str(path))


def child_main(args: argparse.Namespace) -> None:
    """Prepare, encode, train and evaluate one data set; write the raw result JSON."""
    import logging

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    # Import before the clocks start.
    from slim_core.data.stage import prepare_data
    from slim_core.encoding import TextEncoder, encode_items
    from slim_core.rec.stage import run_recommenders

    dataset = args.child
    fits = instrument_fit()
    rss_at_start = peak_rss_mb()
    started = time.perf_counter()
    config = build_config(dataset, args)

    t0 = time.perf_counter()
    data = prepare_data(config)
    data_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    encoder = TextEncoder()  # the default encoder (bundled all-MiniLM-L6-v2), CPU
    vectors = Path(config.run.output_dir) / "bench-item-vectors.parquet"
    encoding = encode_items(data.path("items"), vectors, encoder)
    encode_seconds = time.perf_counter() - t0  # model load included

    rec_out = Path(config.run.output_dir) / "bench-recommenders"
    shutil.rmtree(rec_out, ignore_errors=True)  # fresh negatives and checkpoints
    t0 = time.perf_counter()
    rows = run_recommenders(
        config.recommender, config.evaluation, data.folder, rec_out, item_vectors=vectors
    )
    rec_seconds = time.perf_counter() - t0
    for row in rows:  # CPU time and load beside each run's wall-clock train time
        fit_info = fits.get(f"{row['model']}/{row['variant']}/{row['seed']}")
        if fit_info:
            row["train_cpu_seconds"] = fit_info["cpu_seconds"]
            row["load_1min_after"] = fit_info["load_1min_after"]

    result = {
        "dataset": dataset,
        "config_file": str(CONFIGS[dataset].relative_to(ROOT)),
        "data_stats": data.stats,
        "recommender": config.recommender.model_dump(mode="json"),
        "evaluation": config.evaluation.model_dump(mode="json"),
        "encoder": {
            "model": encoder.name,
            "device": encoder.device,
            "batch_size": encoder.batch_size,
            **encoding,
        },
        "data_seconds": data_seconds,
        "encode_seconds": encode_seconds,
        "recommender_seconds": rec_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "rss_at_start_mb": rss_at_start,
        "cpu_seconds": time.process_time(),
        "fits": fits,
        "rows": rows,
    }
    report_to_parent(result)


# ---------------------------------------------------------------------------------------------
# Parent: run, report, check


def measure(dataset: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", dataset]
    cmd += ["--workdir", str(args.workdir)]
    cmd += ["--seeds", *map(str, args.seeds), "--models", *args.models]
    cmd += ["--variants", *args.variants, "--threads", str(args.threads)]
    cmd += ["--patience", str(args.patience), "--max-epochs", str(args.max_epochs)]
    # the child's logs stream to our stdout/stderr
    return run_child(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_full(rows: list[dict], model: str, variant: str) -> list[dict]:
    """The test-split, full-ranking rows of one model and variant, one per seed."""
    return sorted(
        (
            r
            for r in rows
            if r["model"] == model
            and r["variant"] == variant
            and r["split"] == "test"
            and r["protocol"] == "full"
        ),
        key=lambda r: r["seed"] if r["seed"] is not None else -1,
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def timing_table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | seed | epochs run | best epoch | s/epoch | train s | CPU s/epoch "
        "| load (1 min) after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        for variant in VARIANTS:
            for r in test_full(rows, model, variant):
                lines.append(
                    f"| {model} | {variant} | {r['seed']} | {r['epochs']} | {r['best_epoch']} | "
                    f"{r['seconds_per_epoch']:.2f} | {r['train_seconds']:.1f} | "
                    f"{_fmt(r.get('train_cpu_seconds'), r['epochs'])} | "
                    f"{_fmt(r.get('load_1min_after'))} |"
                )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, per: int = 1) -> str:
    return "—" if value is None else f"{value / max(per, 1):.2f}"


def timing_summary(rows: list[dict]) -> list[dict]:
    out = []
    for model in MODELS:
        for variant in VARIANTS:
            runs = test_full(rows, model, variant)
            if not runs:
                continue
            out.append(
                {
                    "model": model,
                    "variant": variant,
                    "runs": len(runs),
                    "seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in runs]),
                    "epochs": mean_std([r["epochs"] for r in runs]),
                    "best_epoch": mean_std([r["best_epoch"] for r in runs]),
                    "train_seconds": mean_std([r["train_seconds"] for r in runs]),
                    "train_seconds_max": max(r["train_seconds"] for r in runs),
                    "train_seconds_total": sum(r["train_seconds"] for r in runs),
                    "cpu_seconds_per_epoch": mean_std(
                        [
                            r["train_cpu_seconds"] / max(r["epochs"], 1)
                            for r in runs
                            if r.get("train_cpu_seconds") is not None
                        ]
                    ),
                }
            )
    return out


def timing_summary_table(summary: list[dict]) -> str:
    lines = [
        "| model | variant | runs | s/epoch | epochs run | best epoch | train s per run (max) "
        "| train s, all seeds | CPU s/epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        spe, ep, best, tr = (
            s[k] for k in ("seconds_per_epoch", "epochs", "best_epoch", "train_seconds")
        )
        lines.append(
            f"| {s['model']} | {s['variant']} | {s['runs']} | {spe[0]:.2f} ± {spe[1]:.2f} | "
            f"{ep[0]:.1f} ± {ep[1]:.1f} | {best[0]:.1f} ± {best[1]:.1f} | "
            f"{tr[0]:.1f} ± {tr[1]:.1f} ({s['train_seconds_max']:.1f}) | "
            f"{s['train_seconds_total']:.0f} | {s['cpu_seconds_per_epoch'][0]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def recbole_comparison(summary: list[dict]) -> list[str]:
    """Our s/epoch and total training time beside RecBole's (ml-100k, same machine, 2 threads)."""
    lines = []
    for s in summary:
        if s["variant"] != "id" or s["model"] not in RECBOLE_SECONDS_PER_EPOCH:
            continue
        low, high = RECBOLE_SECONDS_PER_EPOCH[s["model"]]
        ours = s["seconds_per_epoch"][0]
        theirs = f"{low:.0f}-{high:.0f}" if low != high else f"~{low:.0f}"
        ratio = f"{low / ours:.0f}-{high / ours:.0f}x" if low != high else f"{low / ours:.0f}x"
        total = RECBOLE_TOTAL_SECONDS[s["model"]]
        lines.append(
            f"{s['model']} (id): ours {ours:.2f} s/epoch vs RecBole {theirs} s/epoch "
            f"-> RecBole takes {ratio} longer per epoch; "
            f"train time per run ours {s['train_seconds'][0]:.0f} s vs RecBole {total:.0f} s "
            f"({total / s['train_seconds'][0]:.1f}x)"
        )
    return lines


def check_ml100k(rows: list[dict]) -> list[str]:
    sas = test_full(rows, "sasrec", "id")
    if not sas:
        return ["SKIP (a): no SASRec (id) runs on ml-100k"]
    secs = [r["train_seconds"] for r in sas]
    ndcgs = [r["ndcg@10"] for r in sas]
    mean_ndcg = statistics.fmean(ndcgs)
    fast = all(s < TARGET_TRAIN_SECONDS for s in secs)
    good = mean_ndcg >= RECBOLE_SASREC_NDCG10
    per_seed = ", ".join(
        f"seed {r['seed']}: {r['train_seconds']:.0f} s, {r['ndcg@10']:.4f}" for r in sas
    )
    lines = [
        f"{'PASS' if fast and good else 'FAIL'} (a): ml-100k SASRec (id) trains in "
        f"{max(secs):.0f} s at most (target < {TARGET_TRAIN_SECONDS:.0f} s per seed: "
        f"{'met' if fast else 'not met'}), mean test full NDCG@10 {mean_ndcg:.4f} (target >= "
        f"{RECBOLE_SASREC_NDCG10} = RecBole SASRec after 2 epochs: {'met' if good else 'not met'}"
        f"; lowest seed {min(ndcgs):.4f}) [{per_seed}]"
    ]
    for model in ("sasrec", "gru4rec"):
        runs = test_full(rows, model, "id")
        if runs:
            m = statistics.fmean(r["ndcg@10"] for r in runs)
            side = ">=" if m >= RECBOLE_GRU4REC_NDCG10 else "<"
            lines.append(
                f"INFO (a): ml-100k {model} (id) mean test full NDCG@10 {m:.4f} {side} RecBole "
                f"GRU4Rec {RECBOLE_GRU4REC_NDCG10} ({m / RECBOLE_GRU4REC_NDCG10:.2f}x)"
            )
    return lines


def check_scientific(rows: list[dict]) -> list[str]:
    lines = []
    for model in MODELS:
        ids = test_full(rows, model, "id")
        texts = test_full(rows, model, "item_text")
        if not ids or not texts:
            lines.append(f"SKIP (b): Scientific {model}: id or item_text runs missing")
            continue
        a = statistics.fmean(r["ndcg@10"] for r in ids)
        b = statistics.fmean(r["ndcg@10"] for r in texts)
        lines.append(
            f"{'PASS' if b > a else 'FAIL'} (b): Scientific {model} item_text mean test full "
            f"NDCG@10 {b:.4f} vs id {a:.4f} ({(b / a - 1) * 100:+.1f}%)"
        )
    return lines


def report(dataset: str, result: dict, machine: dict, args: argparse.Namespace) -> list[str]:
    from slim_core.rec.report import markdown_table, ndcg_bar_chart

    rows = result["rows"]
    ev = result["evaluation"]
    print(f"\n## {TITLES[dataset]} ({dataset})")
    stats = result["data_stats"]
    print(f"data stats: {json.dumps(stats, default=str)[:400]}")
    print(
        f"evaluation: full ranking with history {'excluded' if ev['exclude_history'] else 'NOT excluded'}"
        f" (exclude_history: {str(ev['exclude_history']).lower()}), "
        f"{ev['sampled_negatives']} sampled negatives"
    )
    print(f"\nTest split, mean ± std over seeds (values in %):\n\n{markdown_table(rows, 'test')}")
    print(f"Per run (test rows):\n\n{timing_table(rows)}")
    summary = timing_summary(rows)
    print(f"Per model and variant:\n\n{timing_summary_table(summary)}")
    print(
        f"wall {result['wall_seconds']:.0f} s (data {result['data_seconds']:.1f} s, encoding "
        f"{result['encode_seconds']:.1f} s for {result['encoder']['encoded']} items, recommenders "
        f"{result['recommender_seconds']:.0f} s), peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    verdicts: list[str] = []
    if dataset == "ml-100k":
        comparison = recbole_comparison(summary)
        print("\nRecBole 1.2.1 reference (same machine, 2 threads, ml-100k):")
        print("\n".join(comparison))
        verdicts += check_ml100k(rows)
    else:
        comparison = []
        verdicts += check_scientific(rows)
    print("\n" + "\n".join(verdicts))

    stem = f"{dataset}_{args.tag}" if args.tag else dataset
    chart = RESULTS / f"recommenders_{stem}.png"
    ndcg_bar_chart(
        rows,
        chart,
        title=f"{TITLES[dataset]}: {len(args.seeds)} seed(s), history "
        f"{'excluded' if ev['exclude_history'] else 'not excluded'} in full ranking",
    )
    out = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "dataset": dataset,
            "config_file": result["config_file"],
            "models": args.models,
            "variants": args.variants,
            "popularity": True,
            "seeds": args.seeds,
            "loss": "ce",
            "threads": args.threads,
            "patience": args.patience,
            "max_epochs": args.max_epochs,
            "exclude_history": ev["exclude_history"],
            "tag": args.tag,
            "recommender": result["recommender"],
            "evaluation": ev,
            "encoder": result["encoder"],
        },
        "data_stats": stats,
        "wall_seconds": result["wall_seconds"],
        "process_seconds": result["process_seconds"],
        "data_seconds": result["data_seconds"],
        "encode_seconds": result["encode_seconds"],
        "recommender_seconds": result["recommender_seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "rss_at_start_mb": result["rss_at_start_mb"],
        "timing_summary": summary,
        "recbole_comparison": comparison,
        "verdicts": verdicts,
        "rows": rows,
        # Per run: wall and CPU seconds, load average, per-epoch loss and validation NDCG@10.
        "fits": result.get("fits", {}),
    }
    path = RESULTS / f"recommenders_{stem}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} and {chart.relative_to(ROOT)}")
    return verdicts


def parent_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    overrides = sorted(n for n in os.environ if n.startswith("SLIM_"))
    if overrides:
        print(f"warning: SLIM_ environment overrides apply to the configs: {', '.join(overrides)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = machine_info("torch", "sentence-transformers", "numpy", "duckdb", "slim-rec")
    print(f"machine: {json.dumps(machine)}")
    verdicts = []
    for dataset in args.datasets:
        print(f"\n=== {dataset}: running (logs follow) ===", flush=True)
        result = measure(dataset, args)
        verdicts += report(dataset, result, machine, args)
        sys.stdout.flush()
    print("\nSummary:\n" + "\n".join(verdicts))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/slim-bench-recommenders"),
        help="run folders (data stage, vectors, checkpoints)",
    )
    parser.add_argument(
        "--tag", help="write recommenders_<dataset>_<tag>.json/.png (keeps the default results)"
    )
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        child_main(arguments)
    else:
        parent_main(arguments)
