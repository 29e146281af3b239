"""The run's report: the paper's questions answered on your data, in one markdown file with plots.

Sections: the results table for every variant under both protocols (mean ± std over seeds); the
relative improvement of SLIM over the best variant without an LLM; text matching per rationale
part; NDCG@10 by history-length group (sparsity); cost and latency of teacher and student (the
paper's Table 3); student quality before and after distillation; example rationales.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from slim_core.rec import report as tables
from slim_core.rec.data import SequenceData
from storage import atomic_path, write_text_atomic

GROUPS = 5
# The paper's Table 3 prices (gpt-3.5-turbo, USD per 1K tokens in / out): what the teacher's
# tokens would have cost at the paper's API, shown beside the configured price.
PAPER_PRICE_PER_1K = (0.0015, 0.002)
NON_LLM_VARIANTS = ("id", "item_text")
# The fusion layer with a zero vector for every user, or with the mean history text: no LLM
CONTROLS = ("+zeros", "+history")


def _without_llm(variant: str) -> bool:
    return variant in NON_LLM_VARIANTS or variant.endswith(CONTROLS)


@dataclass(frozen=True)
class Report:
    folder: Path
    markdown: str

    @property
    def path(self) -> Path:
        return self.folder / "report.md"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def _best(by_variant: dict[str, float], pick) -> tuple[str, float] | None:
    chosen = {v: m for v, m in by_variant.items() if pick(v)}
    return max(chosen.items(), key=lambda kv: kv[1]) if chosen else None


def improvement_table(rows: list[dict[str, Any]]) -> str:
    """SLIM (student rationale variants) against the best ID / item-text variant, per backbone."""
    summary = tables.summarize(rows)
    lines = [
        "| model | protocol | best without LLM | NDCG@10 | SLIM | NDCG@10 | relative | "
        "teacher rationales (no distillation) | NDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in sorted({r["model"] for r in summary} - {"popularity", "text_matching"}):
        for protocol in ("full", "sampled"):
            by_variant = {
                r["variant"]: r["ndcg@10"][0]
                for r in summary
                if r["model"] == model and r["protocol"] == protocol and "ndcg@10" in r
            }

            base = _best(by_variant, _without_llm)
            slim = _best(by_variant, lambda v: v.endswith("+student"))
            teacher = _best(by_variant, lambda v: v.endswith("+teacher"))
            if base is None or slim is None:
                continue
            relative = (slim[1] - base[1]) / base[1] if base[1] else float("nan")
            lines.append(
                f"| {model} | {protocol} | {base[0]} | {100 * base[1]:.2f} | {slim[0]} | "
                f"{100 * slim[1]:.2f} | {100 * relative:+.1f}% | "
                f"{teacher[0] if teacher else '—'} | "
                f"{f'{100 * teacher[1]:.2f}' if teacher else '—'} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


SIGNAL_REFERENCES = ("item_text", "zeros", "history")


def signal_rows(rows: list[dict[str, Any]], protocol: str = "full") -> list[dict[str, Any]]:
    """Each rationale row (`+student`, `+teacher`) against item text and the two controls
    without an LLM (`+zeros`, `+history` through the same fusion): the difference in test
    NDCG@10 (%) and the same in units of the seeds' standard deviation, pooled over the two rows
    (None with no spread)."""
    summary = {
        (r["model"], r["variant"]): r["ndcg@10"]
        for r in tables.summarize(rows)
        if r["protocol"] == protocol and "ndcg@10" in r
    }
    out = []
    for model, variant in sorted(summary, key=tables._order):
        fusion, _, source = variant.partition("+")
        if source not in ("student", "teacher"):
            continue
        mean, std = summary[(model, variant)]
        row: dict[str, Any] = {"model": model, "variant": variant, "ndcg10": 100 * mean}
        row["ndcg10_std"] = 100 * std
        for reference in SIGNAL_REFERENCES:
            other = summary.get(
                (model, reference if reference == "item_text" else f"{fusion}+{reference}")
            )
            if other is None:
                continue
            pooled = float(np.sqrt((std**2 + other[1] ** 2) / 2))
            row[f"vs_{reference}"] = 100 * (mean - other[0])
            row[f"vs_{reference}_sigmas"] = (mean - other[0]) / pooled if pooled > 0 else None
        out.append(row)
    return out


def signal_table(rows: list[dict[str, Any]], protocol: str = "full") -> str:
    """`signal_rows` as markdown: what a reader needs to tell a gain from seed noise."""
    lines = [
        "| model | variant | NDCG@10 | vs item text | vs + zeros | vs + history |",
        "|---|---|---|---|---|---|",
    ]
    for row in signal_rows(rows, protocol):
        cells = []
        for reference in SIGNAL_REFERENCES:
            if f"vs_{reference}" not in row:
                cells.append("—")
                continue
            sigmas = row[f"vs_{reference}_sigmas"]
            spread = "" if sigmas is None else f" ({sigmas:+.1f} σ)"
            cells.append(f"{row[f'vs_{reference}']:+.2f}{spread}")
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['ndcg10']:.2f} ± {row['ndcg10_std']:.2f} "
            f"| {' | '.join(cells)} |"
        )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def history_groups(data: SequenceData, groups: int = GROUPS) -> list[np.ndarray]:
    """User rows in up to `groups` groups of about equal size by history length before the test
    item, shortest first (the paper's sparsity analysis). All users of one length share a group,
    so groups never overlap in length: "4-5" and "5-6" read as overlapping ranges."""
    lengths = np.array([data.cutoff(u, "test") for u in range(data.n_users)])
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    cuts = []
    for target in np.linspace(0, len(order), groups + 1)[1:-1].round().astype(int):
        cut = int(np.searchsorted(ordered, ordered[min(target, len(order) - 1)], side="left"))
        if cut > 0 and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    return [part for part in np.split(order, cuts) if len(part)]


def sparsity_rows(
    rows: list[dict[str, Any]], data: SequenceData, groups: int = GROUPS
) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Group labels and, per (model, variant), mean test NDCG@10 (full ranking) per group."""
    parts = history_groups(data, groups)
    lengths = np.array([data.cutoff(u, "test") for u in range(data.n_users)])
    bounds = [(int(lengths[p].min()), int(lengths[p].max())) for p in parts]
    labels = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in bounds]
    per_run: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for row in rows:
        if row["split"] != "test" or row["protocol"] != "full" or not row.get("ranks"):
            continue
        ndcg = _ndcg10(np.asarray(row["ranks"], dtype=np.float64))
        if len(ndcg) != data.n_users:
            continue
        per_run[(row["model"], row["variant"])].append([float(ndcg[p].mean()) for p in parts])
    keys = sorted(per_run, key=tables._order)
    return labels, [
        (f"{model} {variant}", list(np.mean(per_run[(model, variant)], axis=0)))
        for model, variant in keys
    ]


def sparsity_markdown(labels: list[str], series: list[tuple[str, list[float]]]) -> str:
    head = "| model variant | " + " | ".join(f"history {label}" for label in labels) + " |"
    lines = [head, "|---|" + "---|" * len(labels)]
    lines += [
        f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in values) + " |"
        for name, values in series
    ]
    return "\n".join(lines) + "\n"


def sparsity_chart(labels: list[str], series: list[tuple[str, list[float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in series:
        style = "-" if "+student" in name else ("--" if "+teacher" in name else ":")
        ax.plot(range(len(labels)), [100 * v for v in values], style, marker="o", label=name)
    ax.set_xticks(range(len(labels)), [f"{label} items" for label in labels])
    ax.set_xlabel("users grouped by history length before the test item")
    ax.set_ylabel("test NDCG@10, full ranking (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def _column_mean(path: Path | None, column: str) -> float | None:
    if path is None or not Path(path).is_file():
        return None
    values = [v for v in pq.read_table(path, columns=[column]).column(column).to_pylist() if v]
    return _mean(values) if values else None


def cost_markdown(
    teacher: dict[str, Any] | None,
    teacher_file: Path | None,
    student: dict[str, Any] | None,
    student_file: Path | None,
) -> str:
    """The paper's Table 3 on this run: calls, tokens, cost and seconds per rationale."""
    lines = [
        "| stage | model | rationales | calls this run | tokens in | tokens out | cost (USD) | "
        "at gpt-3.5-turbo prices (USD) | seconds per rationale |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if teacher:
        tokens_in, tokens_out = teacher["tokens_in"], teacher["tokens_out"]
        paper = tokens_in / 1000 * PAPER_PRICE_PER_1K[0] + tokens_out / 1000 * PAPER_PRICE_PER_1K[1]
        seconds = _column_mean(teacher_file, "latency_s")
        lines.append(
            f"| teacher | {teacher['model']} | {teacher['answered']} | {teacher['calls']} | "
            f"{tokens_in:,} | {tokens_out:,} | {teacher['cost_usd']:.4f} | {paper:.4f} | "
            f"{'—' if seconds is None else f'{seconds:.2f}'} |"
        )
    if student:
        seconds = _column_mean(student_file, "latency_s")
        lines.append(
            f"| student | {student['model']} | {student['rationales']} | "
            f"{student['generated_this_run']} | — | {student['tokens_out']:,} | 0 | — | "
            f"{'—' if seconds is None else f'{seconds:.2f}'} |"
        )
    note = (
        "\nTokens and calls count this run only (answers reused from the cache cost nothing). "
        "Teacher seconds are per call; student seconds are batch time divided by batch size, "
        "measured when each rationale was generated.\n"
    )
    return "\n".join(lines) + "\n" + note


def _short(text: str, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _steps_text(row: dict[str, Any]) -> str:
    if row["step1"]:
        return "<br>".join(f"{n}. {_short(row[f'step{n}'], 200)}" for n in (1, 2, 3))
    return f"(no three steps) {_short(row['rationale'])}"


def examples_markdown(teacher_file: Path | None, student_file: Path | None, count: int = 3) -> str:
    """Teacher and student rationales side by side for users that have both (same cutoff); else
    a few of each (the student may cover other users than the teacher's sample)."""
    columns = ["user_idx", "cutoff", "step1", "step2", "step3", "rationale"]

    def read(path: Path | None) -> dict[tuple[int, int], dict[str, Any]]:
        if path is None or not Path(path).is_file():
            return {}
        rows = pq.read_table(path, columns=columns).to_pylist()
        return {(r["user_idx"], r["cutoff"]): r for r in rows}

    teacher, student = read(teacher_file), read(student_file)
    shared = sorted(set(teacher) & set(student))[:count]
    out = []
    if shared:
        for key in shared:
            out.append(f"**User {key[0]}, history before position {key[1]}**\n")
            out += [
                f"- {name}: {_steps_text(rows[key])}"
                for name, rows in (("teacher", teacher), ("student", student))
            ]
            out.append("")
        return "\n".join(out)
    for name, rows in (("teacher", teacher), ("student", student)):
        for key in sorted(rows)[:count]:
            out.append(
                f"- {name}, user {key[0]}, before position {key[1]}: {_steps_text(rows[key])}"
            )
    return "\n".join(out) + "\n" if out else ""


ZERO_SHOT_NOTE = (
    "Each rationale's vector ranks every item by cosine against the item text vectors; the "
    "target is the item at its cutoff. The two controls use no LLM and the same (user, cutoff) "
    "pairs: the mean text vector of the history items the prompt showed, and the last one's. A "
    "rationale below them adds nothing the history's text does not say "
    "(`slim rationales score -c CONFIG`)."
)


def write_report(
    folder: Path,
    *,
    title: str,
    rows: list[dict[str, Any]],
    data: SequenceData,
    protocol_note: str,
    teacher: dict[str, Any] | None = None,
    teacher_file: Path | None = None,
    student: dict[str, Any] | None = None,
    student_file: Path | None = None,
    quality: str | None = None,
    zero_shot: str | None = None,
    timings: dict[str, float] | None = None,
) -> Report:
    """Write report.md, ndcg.png and sparsity.png into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tables.ndcg_bar_chart(rows, folder / "ndcg.png", title=title)
    labels, series = sparsity_rows(rows, data)
    sparsity_chart(labels, series, folder / "sparsity.png")
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    sections = [
        f"# {title}\n",
        f"{data.n_users:,} users, {data.n_items:,} items; {len(seeds)} seed(s) per model.\n",
        "## Results (test split, mean ± std over seeds, %)\n",
        protocol_note + "\n",
        "Variants: `id` item IDs only; `item_text` + item text vectors; `user_text` / "
        "`item_user_text` + rationale vectors on the user side (`+student`: SLIM, `+teacher`: "
        "the teacher's own rationales for the users it answered, no distillation; `+zeros`: "
        "the same fusion with a zero vector for every user, a control without rationales; "
        "`+history`: the same fusion with the mean text of the history items the student's "
        "prompt showed, a control without an LLM); "
        "`text_matching` ranks items by text alone (`student:step1` = step 1 only).\n",
        tables.markdown_table(rows),
        "![NDCG@10](ndcg.png)\n",
    ]
    improvement = improvement_table(rows)
    if improvement:
        sections += ["## SLIM against the best variant without an LLM (NDCG@10, %)\n", improvement]
    signal = signal_table(rows)
    if signal:
        sections += [
            "## Rationale rows against item text and the controls (test NDCG@10, full "
            "ranking, %)\n",
            "A difference in units of the seeds' standard deviation (σ, pooled over the two "
            "rows) beside each: within about ±2 σ, a row is not told apart from seed noise.\n",
            signal,
        ]
    sections += [
        f"## By history length (test NDCG@10, full ranking, %; {len(labels)} equal groups)\n",
        sparsity_markdown(labels, series),
        "![sparsity](sparsity.png)\n",
    ]
    if teacher or student:
        sections += [
            "## Cost and latency\n",
            cost_markdown(teacher, teacher_file, student, student_file),
        ]
    if quality:
        sections += [
            "## Student quality on held-out teacher pairs\n",
            quality,
        ]
    if zero_shot:
        sections += [
            "## Rationales scored zero-shot (NDCG@10, %, full ranking, history excluded)\n",
            ZERO_SHOT_NOTE + "\n",
            zero_shot + "\n",
        ]
    examples = examples_markdown(teacher_file, student_file)
    if examples:
        sections += ["## Example rationales\n", examples]
    if timings:
        lines = ["| stage | seconds |", "|---|---|"] + [
            f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()
        ]
        sections += ["## Stage times (this run)\n", "\n".join(lines) + "\n"]
    markdown = "\n".join(sections)
    write_text_atomic(folder / "report.md", markdown)
    return Report(folder, markdown)
