"""A score for every rationale without training anything: does its text point at the next item?

For each rationale at (user, cutoff), its vector (the full text, or one step) ranks every item by
cosine against the item text vectors, with the user's history before the cutoff excluded, and
the item at the cutoff (the one the rationale was written to help predict) is the target.
NDCG@10, Hit@10 and MRR over a source's rationales say how much the text alone points at it.

Two controls without an LLM are scored on the very same (user, cutoff) pairs: the mean of the
text vectors of the history items the prompt showed (`history`), and the text vector of the
last of them (`last item`). A rationale that does not beat them adds nothing the history's own
text does not say. Nothing is encoded here: the pipeline's vectors are read as they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slim_core.config import SlimConfig
from slim_core.errors import DataError
from slim_core.rationale_vectors import PARTS, RationaleVectors
from slim_core.rec.data import SequenceData, load_sequence_data
from slim_core.rec.metrics import full_ranks, metrics_from_ranks
from slim_core.stages import Stage, StageHooks
from slim_core.vectors import UserVectors, read_item_vectors, read_user_vectors, write_vectors
from storage import RunFolder, StageFolder, canonical_hash

CONTROLS = ("history", "last_item")
CHUNK = 1024  # rationales scored at once: 1,024 x 12k items of float32 is 50 MB


@dataclass(frozen=True)
class ZeroShot:
    """One row: a source's rationales (or a control on the same pairs) scored zero-shot."""

    source: str  # teacher | student
    part: str  # full | step1..3 | history | last_item
    rationales: int
    users: int
    ndcg10: float  # %
    hit10: float  # %
    mrr: float  # %


def zero_shot_scores(
    data: SequenceData,
    item_vectors: np.ndarray,
    sources: dict[str, Path],
    history_items: int,
    users: set[int] | None = None,
) -> list[ZeroShot]:
    """Rows for every source (a folder of `{part}.parquet` rationale vectors) and part, then the
    two controls on the pairs of that source's full rationales. `item_vectors` is
    [n_items + 1, dim] by item_idx; `history_items` is how many history items a prompt shows;
    `users` (user_idx) limits the scored pairs to those users."""
    row_of = {int(user): row for row, user in enumerate(data.user_idx.tolist())}
    if users is not None:
        row_of = {user: row for user, row in row_of.items() if user in users}
    items = _unit(torch.as_tensor(item_vectors))
    rows = []
    for source, folder in sources.items():
        pairs: list[tuple[int, int]] = []
        for part in PARTS:
            vectors = read_user_vectors(folder / f"{part}.parquet", item_vectors.shape[1])
            scored = _pairs(vectors, data, row_of)
            if part == "full":
                pairs = scored
            if scored:
                queries = torch.as_tensor(np.stack([vectors.get(u, c) for u, c in scored]))
                rows.append(_score(source, part, queries, scored, data, row_of, items))
        if not pairs:
            continue
        history = torch.as_tensor(history_means(data, pairs, item_vectors, history_items))
        last = torch.stack([items[_shown(data, row_of[u], c, history_items)[-1]] for u, c in pairs])
        rows.append(_score(source, "history", history, pairs, data, row_of, items))
        rows.append(_score(source, "last_item", last, pairs, data, row_of, items))
    return rows


def _pairs(
    vectors: UserVectors, data: SequenceData, row_of: dict[int, int]
) -> list[tuple[int, int]]:
    """The (user_idx, cutoff) pairs with a vector and an item at the cutoff to predict."""
    return sorted(
        (u, c) for u, c in vectors.index if u in row_of and 0 < c < len(data.sequences[row_of[u]])
    )


def history_means(
    data: SequenceData, pairs: list[tuple[int, int]], item_vectors: np.ndarray, history_items: int
) -> np.ndarray:
    """The no-LLM control's queries: per (user_idx, cutoff), the mean text vector of the last
    `history_items` items before the cutoff (what a prompt shows)."""
    row_of = {int(user): row for row, user in enumerate(data.user_idx.tolist())}
    return np.stack(
        [item_vectors[_shown(data, row_of[u], c, history_items)].mean(axis=0) for u, c in pairs]
    )


def shown_history_items(config: SlimConfig) -> dict[str, int]:
    """How many history items each configured LLM source's prompts show, by source."""
    sections = (("teacher", config.teacher), ("student", config.student))
    return {source: cfg.max_history_items for source, cfg in sections if cfg is not None}


def _shown(data: SequenceData, row: int, cutoff: int, history_items: int) -> list[int]:
    sequence = data.sequences[row]
    return [int(i) for i in sequence[max(0, cutoff - history_items) : cutoff]]


def _unit(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.float() / matrix.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)


def zero_shot_ranks(
    queries: np.ndarray, pairs: list[tuple[int, int]], data: SequenceData, item_vectors: np.ndarray
) -> np.ndarray:
    """0-based rank of the item at each (user_idx, cutoff) among all items, by cosine between
    its query vector and the item text vectors, the history before the cutoff excluded."""
    row_of = {int(user): row for row, user in enumerate(data.user_idx.tolist())}
    items = _unit(torch.as_tensor(item_vectors))
    return _ranks(torch.as_tensor(queries), pairs, data, row_of, items).numpy()


def _score(
    source: str,
    part: str,
    queries: torch.Tensor,
    pairs: list[tuple[int, int]],
    data: SequenceData,
    row_of: dict[int, int],
    items: torch.Tensor,
) -> ZeroShot:
    metrics = metrics_from_ranks(_ranks(queries, pairs, data, row_of, items), ks=[10])
    return ZeroShot(
        source,
        part,
        len(pairs),
        len({user for user, _ in pairs}),
        100 * metrics["ndcg@10"],
        100 * metrics["hit@10"],
        100 * metrics["mrr"],
    )


def _ranks(
    queries: torch.Tensor,
    pairs: list[tuple[int, int]],
    data: SequenceData,
    row_of: dict[int, int],
    items: torch.Tensor,
) -> torch.Tensor:
    ranks = []
    queries = _unit(queries)
    for start in range(0, len(pairs), CHUNK):  # [chunk x items] at a time, not [pairs x items]
        chunk = pairs[start : start + CHUNK]
        scores = queries[start : start + CHUNK] @ items.T  # cosine; row 0 is never a candidate
        targets = torch.as_tensor([int(data.sequences[row_of[u]][c]) for u, c in chunk])
        history = torch.zeros(len(chunk), max(c for _, c in chunk), dtype=torch.long)  # 0: pad
        for n, (u, c) in enumerate(chunk):
            history[n, :c] = torch.as_tensor(data.sequences[row_of[u]][:c])
        ranks.append(full_ranks(scores, targets, history))
    return torch.cat(ranks)


def markdown_table(rows: list[ZeroShot]) -> str:
    """One line per source: NDCG@10 of each part and of the two controls on the same pairs."""
    columns = [*PARTS, *CONTROLS]
    names = {"history": "history mean (no LLM)", "last_item": "last item (no LLM)"}
    header = " | ".join(names.get(c, c) for c in columns)
    lines = [
        f"| source | rationales | {header} |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for source in dict.fromkeys(r.source for r in rows):
        mine = {r.part: r for r in rows if r.source == source}
        count = mine["full"].rationales if "full" in mine else 0
        cells = [f"{mine[c].ndcg10:.2f}" if c in mine else "—" for c in columns]
        lines.append(f"| {source} | {count} | {' | '.join(cells)} |")
    return "\n".join(lines)


def run_items(run: RunFolder) -> tuple[SequenceData, np.ndarray]:
    """A run folder's current sequences and item text vectors ([n_items + 1, dim])."""
    data_stage, encode = run.current("data"), run.current("encode")
    if data_stage is None or encode is None:
        raise DataError(
            "no current data or item-vector stage: run the pipeline first", path=run.root
        )
    data = load_sequence_data(data_stage.path)
    item_vectors, _ = read_item_vectors(
        encode.file("item_vectors.parquet"), data.n_items, require_all=False
    )
    return data, item_vectors


def score_run(
    run: RunFolder, history_items: dict[str, int], users: set[int] | None = None
) -> list[ZeroShot]:
    """Score the current rationale vectors of a run folder; `history_items` per source (how many
    history items its prompts show: `teacher.max_history_items`, `student.max_history_items`);
    `users` (user_idx) limits the scored pairs to those users."""
    data, item_vectors = run_items(run)
    sources = {}
    for source in history_items:
        stage = run.current(f"rationale-vectors-{source}")
        if stage is not None:
            sources[source] = stage.path
    if not sources:
        raise DataError(
            "no rationale vectors in this run: run the teacher / student stages", path=run.root
        )
    rows = []
    for source, folder in sources.items():
        rows += zero_shot_scores(data, item_vectors, {source: folder}, history_items[source], users)
    return rows


HISTORY_SOURCE = "history"
HISTORY_VECTORS_VERSION = 1


@dataclass(frozen=True)
class HistoryControl(Stage[RationaleVectors]):
    """The no-LLM control as a user-side source: at every (user, cutoff) where `pairs_of` (the
    student's rationales) has one, the mean text vector of the `history_items` items before the
    cutoff that its prompt showed. Read through the same fusion as the rationales, it tells
    what a rationale adds over the history's own text (rows `+history`)."""

    pairs_of: RationaleVectors
    data_folder: Path
    item_vectors: Path
    item_vectors_key: str
    history_items: int
    name = f"rationale-vectors-{HISTORY_SOURCE}"
    task_name = "history-vectors"
    tag = "slim-encode"

    @functools.cached_property
    def key(self) -> str:
        return canonical_hash(
            {
                "version": HISTORY_VECTORS_VERSION,
                "pairs": self.pairs_of.key,
                "items": self.item_vectors_key,
                "history_items": self.history_items,
            }
        )

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        data = load_sequence_data(self.data_folder)
        matrix, _ = read_item_vectors(self.item_vectors, data.n_items, require_all=False)
        row_of = {int(user): row for row, user in enumerate(data.user_idx.tolist())}
        rationales = read_user_vectors(self.pairs_of.path("full"), matrix.shape[1])
        pairs = sorted((u, c) for u, c in rationales.index if u in row_of and c > 0)
        if not pairs:
            raise DataError(
                "no rationales to take (user, cutoff) pairs from", path=self.pairs_of.folder
            )
        keys = {
            "user_idx": np.array([u for u, _ in pairs], dtype=np.int64),
            "cutoff": np.array([c for _, c in pairs], dtype=np.int64),
        }
        means = history_means(data, pairs, matrix, self.history_items)
        write_vectors(folder.file("full.parquet"), keys, means)
        facts = {"rationales": len(pairs), "users": len({u for u, _ in pairs})}
        folder.write_manifest({"full.parquet": {}}, facts=facts, pairs_from=self.pairs_of.source)

    def load(self, folder: StageFolder) -> RationaleVectors:
        facts = (folder.read_manifest() or {})["facts"]
        return RationaleVectors(HISTORY_SOURCE, folder.path, folder.key, facts)
