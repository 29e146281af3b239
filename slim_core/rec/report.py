"""Result tables and plots from metric rows: mean ± std over seeds, both protocols side by side."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from slim_core.rec.metrics import summarize_runs
from storage import atomic_path

METRICS = ("ndcg@10", "hit@10", "hit@20", "mrr")
PROTOCOL_NAMES = {"full": "full ranking", "sampled": "100 sampled negatives"}


def summarize(rows: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """One row per (model, variant, protocol): mean and std of each metric over seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        if row["split"] == split:
            groups[(row["model"], row["variant"], row["protocol"])].append(
                {m: row[m] for m in METRICS if m in row}
            )
    out = []
    for (model, variant, protocol), runs in groups.items():
        stats = summarize_runs(runs)
        out.append(
            {
                "model": model,
                "variant": variant,
                "protocol": protocol,
                "runs": len(runs),
                **{m: stats[m] for m in METRICS if m in stats},
            }
        )
    return out


def summary_records(rows: list[dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """`summarize` as flat records in %, ordered as the markdown table: one per (model,
    variant, protocol), `<metric>` and `<metric>_std` columns."""
    records = []
    for row in sorted(
        summarize(rows, split), key=lambda r: (_order((r["model"], r["variant"])), r["protocol"])
    ):
        record = {k: row[k] for k in ("model", "variant", "protocol", "runs")}
        for metric in METRICS:
            if metric in row:
                mean, std = row[metric]
                record[metric] = round(100 * mean, 2)
                record[f"{metric}_std"] = round(100 * std, 2)
        records.append(record)
    return records


def markdown_table(rows: list[dict[str, Any]], split: str = "test") -> str:
    """Paper-style table: a row per model and variant, NDCG@10 / Hit@10 / Hit@20 / MRR in %,
    full ranking and sampled protocol side by side."""
    summary = summarize(rows, split)
    by_key = {(r["model"], r["variant"], r["protocol"]): r for r in summary}
    keys = sorted({(r["model"], r["variant"]) for r in summary}, key=_order)
    header = ["model", "variant", "seeds"] + [
        f"{metric} ({protocol})" for protocol in ("full", "sampled") for metric in METRICS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, variant in keys:
        cells = [
            model,
            variant,
            str(
                max(by_key.get((model, variant, p), {}).get("runs", 0) for p in ("full", "sampled"))
            ),
        ]
        for protocol in ("full", "sampled"):
            row = by_key.get((model, variant, protocol))
            for metric in METRICS:
                if row is None or metric not in row:
                    cells.append("—")
                else:
                    mean, std = row[metric]
                    spread = f" ± {100 * std:.2f}" if row["runs"] > 1 else ""  # one seed: none
                    cells.append(f"{100 * mean:.2f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _order(key: tuple[str, str]) -> tuple[int, str, int, int, str]:
    """Backbones, then variants from IDs only to rationales, then sources; the name last, so
    the same rows always come in the same order."""
    model, variant = key
    models = ["popularity", "gru4rec", "sasrec", "srgnn", "text_matching"]
    variants = ["id", "item_text", "user_text", "item_user_text"]
    sources = ["student", "teacher", "history", "zeros"]
    base, _, source = variant.partition("+")
    if model == "text_matching":  # its variants are sources ("student", "student:step1")
        base, source = "", variant.split(":")[0]
    return (
        models.index(model) if model in models else 99,
        model,
        variants.index(base) if base in variants else 99,
        sources.index(source) if source in sources else 99,
        variant,
    )


def ndcg_bar_chart(
    rows: list[dict[str, Any]], path: Path, split: str = "test", title: str = ""
) -> Path:
    """Test NDCG@10 (mean ± std) per model and variant, full ranking beside the sampled protocol.

    Horizontal bars, one row per (model, variant) labelled once on the shared axis: with 20 or
    more rows, labels under vertical bars overlapped and could not be read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows, split)
    keys = sorted({(r["model"], r["variant"]) for r in summary}, key=_order)
    by_key = {(r["model"], r["variant"], r["protocol"]): r for r in summary}
    fig, axes = plt.subplots(
        1, 2, figsize=(11, 1.6 + 0.32 * len(keys)), sharey=True, layout="constrained"
    )
    positions = list(range(len(keys)))[::-1]  # the first row on top
    for ax, protocol in zip(axes, ("full", "sampled"), strict=True):
        means = [by_key.get((m, v, protocol), {}).get("ndcg@10", (0.0, 0.0)) for m, v in keys]
        ax.barh(
            positions,
            [100 * m for m, _ in means],
            xerr=[100 * s for _, s in means],
            color=[_colour(m) for m, _ in keys],
            capsize=3,
        )
        ax.set_title(f"{PROTOCOL_NAMES[protocol]} ({split})", fontsize=10)
        ax.set_xlabel("NDCG@10 (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, [f"{m}  {v}" for m, v in keys], fontsize=8)
    fig.suptitle(f"{title}: NDCG@10" if title else "NDCG@10")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def _colour(model: str) -> str:
    return {
        "popularity": "#999999",
        "gru4rec": "#4c72b0",
        "sasrec": "#dd8452",
        "srgnn": "#c44e52",
        "text_matching": "#55a868",
    }.get(model, "#8172b3")
