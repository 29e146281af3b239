"""Backbone strength against published figures on the same data, and the SASRec ablation.

Why this exists: every SLIM number is read against its backbone, so the ID-only and item-text
backbones must reach what people publish on the same split (issue 23). This script trains
SASRec, GRU4Rec and SRGNN (`id` and `item_text`), over seeds, on each data set's shipped config
and prints them beside the references:

- Scientific: the UniSRec paper's SASRec (RecBole, full ranking, history kept): NDCG@10 5.53%;
- ml-100k: RecBole's converged GRU4Rec (4.81%, ../shared/BASELINES.md) and RecBole's SASRec run
  to convergence by `benchmarks/recbole_reference.py` (read from its JSON when present).

`--ablation` trains SASRec `id` once per difference from RecBole's and the original SASRec's
recipe (initialisation, dropout, batch, pre-LN, training rows), to show what each does.

    python benchmarks/backbones.py --prepare          # data stage + item vectors (CPU, ~1 min)
    python benchmarks/backbones.py --workers 2        # backbones, seeds 1 2 3
    python benchmarks/backbones.py --ablation --workers 2
    python benchmarks/backbones.py --models sasrec --datasets ml-100k --seeds 1 --max-epochs 2

Each run is one process from a pool of `--workers` (each run seeds torch's global generator).
`--device cuda` trains on a GPU: the metrics are the same recipe, the seconds are not the CPU's.
Results: `benchmarks/results/backbones.json` ({"rows": [...]}, one row per dataset, model and
variant) and `backbones_ablation.json`, each with the machine and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "bench-backbones"
CONFIGS = {
    "scientific": ROOT / "configs" / "scientific.yaml",
    "ml-100k": ROOT / "configs" / "ml-100k.yaml",
    # The protocol of the project's Scientific figures before issue 23 (repeats dropped, the
    # user's history excluded from the candidates): the before/after comparison on one protocol.
    "scientific-excluded": ROOT / "configs" / "scientific.yaml",
}
PROTOCOL_OVERRIDES = {
    "scientific-excluded": {"data": {"dedup": "first"}, "evaluation": {"exclude_history": True}}
}

# Published or peer figures on the same split and protocol (test NDCG@10, full ranking, in %).
REFERENCES = {
    ("scientific", "sasrec", "id"): (5.53, "UniSRec paper (Hou et al., KDD 2022), RecBole SASRec"),
    ("ml-100k", "gru4rec", "id"): (4.81, "RecBole 1.2.1 GRU4Rec, converged (BASELINES.md)"),
}
RECBOLE_SASREC = RESULTS / "recbole_sasrec_ml-100k.json"

# The SASRec ablation: what each difference from the two reference recipes does.
ABLATIONS = {
    "pytorch_init": "PyTorch's default initialisation (shipped before: positions normal(0, 1))",
    "position_init": "PyTorch's defaults, but the position table normal(0, 0.02)",
    "recbole_init": "every Linear and Embedding normal(0, 0.02) (RecBole; the new default)",
    "dropout_0.5": "recbole_init + dropout 0.5 (RecBole's default)",
    "batch_2048": "recbole_init + batch 2048 (RecBole's default)",
    "pre_ln": "recbole_init + pre-LN blocks, embeddings x sqrt(d), final LayerNorm (original)",
    "prefixes": "recbole_init + every prefix its own row, loss on the last position (RecBole)",
}


def _config(dataset: str, overrides: dict[str, Any]):
    from slim_core.config import config_from_dict, load_config

    config = load_config(CONFIGS[dataset])
    values = config.model_dump(mode="json")
    values["run"]["output_dir"] = str(RUNS / dataset)
    for section, changes in PROTOCOL_OVERRIDES.get(dataset, {}).items():
        values[section].update(changes)
    # The backbones alone: no rationale variants or text matching (they need the LLM stages).
    values["recommender"].update(
        variants=["id", "item_text"], text_matching=False, zero_vector_control=False, **overrides
    )
    return config_from_dict(values)


def prepare(datasets: list[str]) -> None:
    """Data stage and item vectors, once (the runs only read them)."""
    from slim_core.data import prepare_data
    from slim_core.rec.pipeline import encode_stage

    for dataset in datasets:
        config = _config(dataset, {})
        started = time.perf_counter()
        data = prepare_data(config)
        encoded = encode_stage(config, data)
        (RUNS / dataset / "prepared.json").write_text(
            json.dumps(
                {
                    "data": str(data.folder.resolve().relative_to(ROOT)),
                    "item_vectors": str(encoded.item_vectors.resolve().relative_to(ROOT)),
                },
                indent=1,
            )
        )
        print(f"{dataset}: prepared in {time.perf_counter() - started:.0f} s ({data.folder})")


def _ablate(model, ablation: str):
    """Turn a freshly built SASRec into the ablation's recipe."""
    from torch import nn

    if ablation in ("pytorch_init", "position_init"):
        model.position.reset_parameters()
        for module in model.transformer.modules():
            if isinstance(module, nn.Linear | nn.LayerNorm):
                module.reset_parameters()
            if isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()
        if ablation == "position_init":
            nn.init.normal_(model.position.weight, std=0.02)
    if ablation == "pre_ln":
        for block in model.transformer.layers:
            block.norm_first = True
        model.transformer.norm = nn.LayerNorm(model.position.embedding_dim)
        scale = model.position.embedding_dim**0.5
        encode = model.encode
        # The original SASRec scales the item embeddings and has no LayerNorm before the blocks.
        model.norm = nn.Identity()
        model.encode = lambda item_emb, item_seq: encode(item_emb * scale, item_seq)
    if ablation == "prefixes":
        model.every_position = False
    return model


def one_run(task: dict[str, Any]) -> dict[str, Any]:
    """One (dataset, model, variant, seed[, ablation]) run in a worker process."""
    import torch

    from slim_core.rec import stage

    torch.set_num_threads(task["threads"])
    overrides = dict(task["overrides"])
    if task.get("ablation") == "dropout_0.5":
        overrides["dropout"] = 0.5
    if task.get("ablation") == "batch_2048":
        overrides["batch_size"] = 2048
    config = _config(task["dataset"], overrides)
    prepared = json.loads((RUNS / task["dataset"] / "prepared.json").read_text())
    out = RUNS / task["dataset"] / "bench"
    out.mkdir(parents=True, exist_ok=True)
    inputs = stage.load_inputs(
        config.recommender,
        config.evaluation,
        ROOT / prepared["data"],
        out,
        ROOT / prepared["item_vectors"],
        None,
    )
    # A worker process runs several tasks: wrap the original builder, never an earlier wrapper.
    build = getattr(stage.build_model, "original", stage.build_model)
    if task.get("ablation"):
        stage.build_model = lambda *a, **k: _ablate(build(*a, **k), task["ablation"])
        stage.build_model.original = build
    else:
        stage.build_model = build
    started = time.perf_counter()
    cpu = time.process_time()
    if task["model"] == "popularity":
        rows = stage.popularity_rows(inputs, config.evaluation)
    else:
        rows = stage.train_sequential(
            task["model"],
            task["variant"],
            task["seed"],
            config.recommender,
            config.evaluation,
            inputs,
        )
    test = {r["protocol"]: r for r in rows if r["split"] == "test"}
    return {
        **{k: task.get(k) for k in ("dataset", "model", "variant", "seed", "ablation")},
        "ndcg10_full": 100 * test["full"]["ndcg@10"],
        "hit10_full": 100 * test["full"]["hit@10"],
        "hit20_full": 100 * test["full"]["hit@20"],
        "ndcg10_sampled": 100 * test["sampled"]["ndcg@10"],
        "valid_ndcg10_full": 100
        * next(r for r in rows if r["split"] == "valid" and r["protocol"] == "full")["ndcg@10"],
        "epochs": test["full"].get("epochs"),
        "best_epoch": test["full"].get("best_epoch"),
        "seconds_per_epoch": test["full"].get("seconds_per_epoch"),
        "cpu_seconds": time.process_time() - cpu,
        "wall_seconds": time.perf_counter() - started,
        "device": config.recommender.device,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], by: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in by), []).append(run)
    rows = []
    for key, group in groups.items():
        row = dict(zip(by, key, strict=True))
        row["seeds"] = sorted(r["seed"] for r in group if r["seed"] is not None)
        for metric in ("ndcg10_full", "hit10_full", "hit20_full", "ndcg10_sampled"):
            mean, std = _mean_std([r[metric] for r in group])
            row[metric] = round(mean, 2)
            if metric == "ndcg10_full":
                row["ndcg10_full_std"] = round(std, 2)
            elif metric != "ndcg10_sampled":
                row[f"{metric}_std"] = round(std, 2)
        row["epochs"] = [r["epochs"] for r in group]
        row["best_epochs"] = [r["best_epoch"] for r in group]
        spe = [r["seconds_per_epoch"] for r in group if r["seconds_per_epoch"]]
        row["seconds_per_epoch"] = round(statistics.mean(spe), 2) if spe else None
        row["reference"] = reference(row.get("dataset"), row.get("model"), row.get("variant"))
        rows.append(row)
    return rows


def reference(dataset: str | None, model: str | None, variant: str | None) -> float | None:
    if (dataset, model, variant) == ("ml-100k", "sasrec", "id") and RECBOLE_SASREC.exists():
        return round(100 * json.loads(RECBOLE_SASREC.read_text())["test"]["ndcg@10"], 2)
    found = REFERENCES.get((dataset, model, variant))
    return found[0] if found else None


def print_table(rows: list[dict[str, Any]], label: str) -> None:
    print(
        f"\n| dataset | model | {label} | seeds | NDCG@10 full | Hit@10 full | Hit@20 full "
        "| NDCG@10 sampled | epochs (best) | reference |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        epochs = ", ".join(
            f"{e} ({b})" for e, b in zip(r["epochs"], r["best_epochs"], strict=True) if e
        )
        ref = "—" if r["reference"] is None else f"{r['reference']:.2f}"
        print(
            f"| {r['dataset']} | {r['model']} | {r.get(label) or '—'} | {len(r['seeds'])} "
            f"| {r['ndcg10_full']:.2f} ± {r['ndcg10_full_std']:.2f} "
            f"| {r['hit10_full']:.2f} ± {r['hit10_full_std']:.2f} "
            f"| {r['hit20_full']:.2f} ± {r['hit20_full_std']:.2f} | {r['ndcg10_sampled']:.2f} "
            f"| {epochs or '—'} | {ref} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["scientific", "ml-100k"], choices=list(CONFIGS)
    )
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "srgnn"])
    parser.add_argument("--variants", nargs="+", default=["id", "item_text"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--prepare", action="store_true", help="data stage + item vectors only")
    parser.add_argument("--ablation", action="store_true", help="the SASRec ablation instead")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--device", default="cpu", help="recommender.device of every run")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--suffix", default="", help="appended to the result file names")
    parser.add_argument(
        "--runs-log", type=Path, default=None, help="also append each finished run here (JSONL)"
    )
    parser.add_argument("--note", default=None, help="where the runs ran, for the JSON")
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="a YAML fragment with a `recommender:` section (slim tune's best.yaml) to train with",
    )
    parser.add_argument(
        "--from-runs", type=Path, default=None, help="summarise the runs of a JSONL log instead"
    )
    args = parser.parse_args()
    if args.prepare:
        prepare(args.datasets)
        return
    overrides: dict[str, Any] = {"device": args.device}
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    if args.settings:
        import yaml

        overrides.update(yaml.safe_load(args.settings.read_text())["recommender"])
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    if args.ablation:
        tasks = [
            {"dataset": d, "model": "sasrec", "variant": "id", "seed": s, "ablation": a}
            for d in args.datasets
            for a in ABLATIONS
            for s in args.seeds
        ]
    else:
        tasks = [
            {"dataset": d, "model": m, "variant": v, "seed": s}
            for d in args.datasets
            for m in args.models
            if m != "popularity"  # added once per data set below
            for v in args.variants
            for s in args.seeds
        ] + [
            {"dataset": d, "model": "popularity", "variant": "id", "seed": None}
            for d in args.datasets
        ]
    for task in tasks:
        task.update(threads=threads, overrides=overrides)
    started = time.perf_counter()
    runs = []
    if args.from_runs:
        runs = [json.loads(line) for line in args.from_runs.read_text().splitlines() if line]
        tasks = []
    with ProcessPoolExecutor(args.workers) as pool:
        for run in pool.map(one_run, tasks):
            runs.append(run)
            if args.runs_log:
                with args.runs_log.open("a") as log:
                    log.write(json.dumps(run) + "\n")
            print(
                f"{run['dataset']} {run['model']} {run['variant']} {run['ablation'] or ''} "
                f"seed {run['seed']}: NDCG@10 {run['ndcg10_full']:.2f} "
                f"(best epoch {run['best_epoch']} of {run['epochs']}, {run['wall_seconds']:.0f} s)",
                flush=True,
            )
    from harness import write_results  # benchmarks/harness.py

    by = ("dataset", "model", "ablation") if args.ablation else ("dataset", "model", "variant")
    rows = summarise(runs, by)
    print_table(rows, "ablation" if args.ablation else "variant")
    name = ("backbones_ablation" if args.ablation else "backbones") + args.suffix
    import torch

    payload = {
        "device": ", ".join(sorted({str(r["device"]) for r in runs})),
        "note": args.note,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "workers": args.workers,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "settings": _config(args.datasets[0], overrides).recommender.model_dump(mode="json"),
        "ablations": ABLATIONS if args.ablation else None,
        "references": {"/".join(k): v for k, v in REFERENCES.items()},
        "rows": rows,
        "runs": runs,
    }
    write_results(RESULTS / f"{name}.json", payload)
    print(f"\nwrote {RESULTS / f'{name}.json'}")


if __name__ == "__main__":
    main()
