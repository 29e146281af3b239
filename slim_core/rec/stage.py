"""The recommender stage: train every configured model, variant and seed; evaluate both protocols.

Output: one `metrics.parquet` row per (model, variant, seed, split, protocol), and the sampled
negatives (`negatives.parquet`) that every model is ranked against, drawn once per data folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch

from slim_core.config import (
    VARIANTS,
    EvalConfig,
    RecommenderConfig,
    uses_item_vectors,
    uses_user_vectors,
)
from slim_core.errors import ConfigError, DataError
from slim_core.rec.data import (
    EvalInputs,
    SequenceData,
    UserVectorIndex,
    eval_inputs,
    load_sequence_data,
    training_prefixes,
    training_windows,
)
from slim_core.rec.metrics import metrics_from_ranks
from slim_core.rec.models import (
    SRGNN,
    GRU4Rec,
    Popularity,
    SASRec,
    SequentialRecommender,
    TextMatching,
)
from slim_core.rec.negatives import read_negatives, sample_negatives, write_negatives
from slim_core.rec.train import (
    TrainResult,
    evaluate,
    fit,
    rank_targets,
    resolve_device,
    set_seed,
    trimmed_start,
    window_batches,
)
from slim_core.vectors import read_item_vectors, read_user_vectors
from storage import atomic_path

log = logging.getLogger("slim_core.rec")

SPLITS = ("valid", "test")


@dataclass
class StageInputs:
    data: SequenceData
    valid: EvalInputs
    test: EvalInputs
    negatives: dict[str, np.ndarray]
    item_text: torch.Tensor | None
    users: dict[str, UserVectorIndex]  # source name -> vectors ("file", "student", "teacher:step1")

    def user_index(self, source: str | None) -> UserVectorIndex:
        if source is None or source not in self.users:
            raise ConfigError(
                f"no user vectors named {source!r} (have: {', '.join(self.users) or 'none'})"
            )
        return self.users[source]


def load_negatives(data: SequenceData, cfg: EvalConfig, path: Path) -> dict[str, np.ndarray]:
    """The sampled protocol's negatives: drawn once (fixed seed) and saved, then always reused."""
    if not path.exists():
        stored = {
            split: (
                data.user_idx,
                sample_negatives(
                    data.sequences, data.n_items, cfg.sampled_negatives, cfg.negative_seed + n
                ),
            )
            for n, split in enumerate(SPLITS)
        }
        write_negatives(path, stored)  # kept, not read back: a copy of 1.2 GB at 3M users
    else:
        stored = read_negatives(path)
    out = {}
    for split in SPLITS:
        users, negatives = stored[split]
        if not np.array_equal(users, data.user_idx) or negatives.shape[1] != cfg.sampled_negatives:
            raise DataError(
                "negatives do not match the data folder's users or the configured count; "
                "delete the file to draw them again",
                path=path,
                field=split,
            )
        out[split] = negatives
    return out


FILE_SOURCE = "file"
ZERO_SOURCE = "zeros"  # the zero-vector control: every user reads the zero vector


def user_side_sources(cfg: RecommenderConfig, sources: list[str]) -> list[str]:
    """The user-vector sources each user_text variant trains once per: the given ones, then the
    zero-vector control when asked for (and there is something to control)."""
    return sources + [ZERO_SOURCE] if cfg.zero_vector_control and sources else sources


@dataclass(frozen=True)
class RunSpec:
    model: str  # sasrec | gru4rec | text_matching | popularity
    variant: str
    seed: int | None
    source: str | None = None  # user vectors: "file", "student", "teacher", "student:step1", ...

    @property
    def name(self) -> str:
        if self.source in (None, FILE_SOURCE):
            return f"{self.model}-{self.variant}-{self.seed}"
        return f"{self.model}-{self.variant}-{self.source.replace(':', '-')}-{self.seed}"


def run_specs(rec: RecommenderConfig, sources: Sequence[str] = ()) -> list[RunSpec]:
    """Every run: popularity, each backbone x variant x seed (user-side variants once per
    rationale source), and text matching per source and rationale part."""
    full = [s for s in sources if ":" not in s]
    if uses_user_vectors(rec) and not full:
        raise ConfigError(
            "the user_text variants and text matching need rationale vectors: configure the "
            "teacher and student sections (and recommender.rationales), or set "
            "recommender.user_vectors to a Parquet of (user_idx, cutoff, vector)"
        )
    specs = [RunSpec("popularity", "id", None)] if rec.popularity else []
    fused = user_side_sources(rec, full)
    for model in rec.models:
        for variant in rec.variants:
            for source in fused if VARIANTS[variant].user_text else [None]:
                specs += [RunSpec(model, variant, seed, source) for seed in rec.seeds]
    if rec.text_matching:
        matching = [s for s in sources if s in full and "full" in rec.text_matching_parts]
        matching += [s for s in sources if ":" in s]
        specs += [
            RunSpec("text_matching", "rationale", s, src) for src in matching for s in rec.seeds
        ]
    return specs


def load_inputs(
    cfg: RecommenderConfig,
    ev: EvalConfig,
    data_folder: Path,
    out_folder: Path,
    item_vectors: Path | None,
    user_vectors: Path | dict[str, Path] | None,
) -> StageInputs:
    """Sequences, eval inputs, negatives and text vectors.

    `user_vectors` is one file given in the configuration (source "file": every evaluated
    (user, cutoff) must have a vector), or the pipeline's rationale vectors by source name
    ("student", "teacher", "student:step1", ...), where users without a rationale get zeros.
    """
    data = load_sequence_data(data_folder)
    item_text = None
    sources = {FILE_SOURCE: user_vectors} if isinstance(user_vectors, Path) else user_vectors or {}
    if uses_item_vectors(cfg):
        if item_vectors is None:
            raise ConfigError("the item_text variants and text matching need item text vectors")
        matrix, _ = read_item_vectors(item_vectors, data.n_items, require_all=True)
        item_text = torch.as_tensor(matrix)
    if uses_user_vectors(cfg) and not sources:
        raise ConfigError(
            "the user_text variants and text matching need rationale vectors: run the whole "
            "pipeline (teacher and student sections), or set recommender.user_vectors to a "
            "Parquet of (user_idx, cutoff, vector)"
        )
    users = {}
    for name, path in sources.items():
        required = (
            [
                (int(u), data.cutoff(row, split))
                for split in SPLITS
                for row, u in enumerate(data.user_idx)
            ]
            if name == FILE_SOURCE
            else []
        )
        vectors = read_user_vectors(path, required=required)
        users[name] = UserVectorIndex(
            data, {key: vectors.matrix[row] for key, row in vectors.index.items()}, vectors.dim
        )
        log.info("user vectors %s: %d users of %d have one", name, users[name].users, data.n_users)
    if cfg.zero_vector_control and users:
        dim = next(iter(users.values())).matrix.shape[1]
        users[ZERO_SOURCE] = UserVectorIndex(data, {}, dim)
    return StageInputs(
        data,
        eval_inputs(data, "valid", cfg.max_len),
        eval_inputs(data, "test", cfg.max_len),
        load_negatives(data, ev, out_folder / "negatives.parquet"),
        item_text,
        users,
    )


def variant_label(variant: str, source: str | None) -> str:
    """Row label: the variant, plus the rationale source for pipeline-made user vectors."""
    return variant if source in (None, FILE_SOURCE) else f"{variant}+{source}"


def build_model(
    kind: str,
    variant: str,
    n_items: int,
    cfg: RecommenderConfig,
    inputs: StageInputs,
    source: str | None = None,
) -> SequentialRecommender:
    uses_items, uses_users = VARIANTS[variant]  # item text, user text
    common = {
        "item_text": inputs.item_text if uses_items else None,
        "user_text_dim": inputs.user_index(source).matrix.shape[1] if uses_users else None,
        "loss": cfg.loss,
        "bce_negatives": cfg.bce_negatives,
        # SparseAdam has no weight decay: a decayed BCE item table stays on dense Adam.
        "sparse_items": cfg.weight_decay == 0,
        "logits_memory_mb": cfg.logits_memory_mb,
    }
    if kind == "sasrec":
        return SASRec(
            n_items,
            cfg.dim,
            max_len=cfg.max_len,
            layers=cfg.layers,
            heads=cfg.heads,
            inner_dim=cfg.inner_dim,
            dropout=cfg.dropout,
            **common,
        )
    if kind == "gru4rec":
        return GRU4Rec(
            n_items,
            cfg.dim,
            hidden=cfg.gru_hidden,
            layers=cfg.gru_layers,
            dropout=cfg.dropout,
            **common,
        )
    if kind == "srgnn":
        return SRGNN(n_items, cfg.dim, steps=cfg.gnn_steps, **common)
    raise ConfigError(
        f"recommender.models: unknown model {kind!r} (expected sasrec, gru4rec or srgnn)"
    )


def _user_text(users: UserVectorIndex, split_inputs: EvalInputs, part: slice) -> torch.Tensor:
    rows = users.lookup(split_inputs.users[part], split_inputs.cutoffs[part])
    return torch.as_tensor(users.matrix[rows])


def sequential_scorer(
    model: SequentialRecommender, split_inputs: EvalInputs, users: UserVectorIndex | None
):
    device = next(model.parameters()).device

    def score(part: slice) -> torch.Tensor:
        text = None if users is None else _user_text(users, split_inputs, part).to(device)
        history = torch.as_tensor(split_inputs.histories[part])
        if model.cuts_padding:
            history = history[:, trimmed_start(history) :]
        history = history.to(device)
        return model.full_sort_predict(history, text).cpu()

    return score


def _matching_scorer(model: TextMatching, split_inputs: EvalInputs, users: UserVectorIndex):
    device = model.g_t.weight.device
    return lambda part: model.full_sort_predict(
        _user_text(users, split_inputs, part).to(device)
    ).cpu()


def _rows(
    model: str,
    variant: str,
    seed: int | None,
    results: dict[str, dict[str, torch.Tensor]],
    ks: list[int],
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per (split, protocol): the metrics, plus every user's target rank (in user
    order) so that reports can slice users (history-length groups) without retraining."""
    return [
        {
            "model": model,
            "variant": variant,
            "seed": seed,
            "split": split,
            "protocol": protocol,
            **metrics_from_ranks(ranks, ks),
            "ranks": ranks.tolist(),
            **extra,
        }
        for split, by_protocol in results.items()
        for protocol, ranks in by_protocol.items()
    ]


def _evaluate_splits(
    score_for, inputs: StageInputs, ev: EvalConfig
) -> dict[str, dict[str, torch.Tensor]]:
    return {
        split: rank_targets(
            score_for(getattr(inputs, split)),
            getattr(inputs, split),
            exclude_history=ev.exclude_history,
            negatives=inputs.negatives[split],
            batch_size=ev.users_per_batch(inputs.data.n_items),
        )
        for split in SPLITS
    }


def _validation_ndcg(score, inputs: StageInputs, ev: EvalConfig) -> float:
    """Full-ranking NDCG@10 on the validation split (early stopping, tuning)."""
    batch = ev.users_per_batch(inputs.data.n_items)
    ranks = evaluate(
        score, inputs.valid, ks=[10], exclude_history=ev.exclude_history, batch_size=batch
    )
    return ranks["full"]["ndcg@10"]


def train_sequential(
    kind: str,
    variant: str,
    seed: int,
    cfg: RecommenderConfig,
    ev: EvalConfig,
    inputs: StageInputs,
    checkpoint: Path | None = None,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """One backbone run; user-side variants read the rationale vectors of `source`."""
    model, users, result = fit_sequential(kind, variant, seed, cfg, ev, inputs, checkpoint, source)
    scores = _evaluate_splits(
        lambda split_inputs: sequential_scorer(model, split_inputs, users), inputs, ev
    )
    return _rows(kind, variant_label(variant, source), seed, scores, ev.ks, _train_facts(result))


def fit_sequential(
    kind: str,
    variant: str,
    seed: int,
    cfg: RecommenderConfig,
    ev: EvalConfig,
    inputs: StageInputs,
    checkpoint: Path | None = None,
    source: str | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[SequentialRecommender, UserVectorIndex | None, TrainResult]:
    """Train one backbone with early stopping on validation NDCG@10; the test split is not read."""
    data = inputs.data
    set_seed(seed)  # the initial weights too, not only the training order
    model = build_model(kind, variant, data.n_items, cfg, inputs, source)
    model.to(resolve_device(cfg.device))
    users = inputs.user_index(source) if VARIANTS[variant].user_text else None
    make_rows = training_windows if model.every_position else training_prefixes
    windows = make_rows(data, cfg.max_len)
    # Each training target sees the latest rationale written before it (as of its cutoff).
    batch_size = cfg.batch_size if model.every_position else cfg.prefix_batch_size
    batches = window_batches(windows, batch_size, users, model.cuts_padding)

    def validate() -> float:
        scorer = sequential_scorer(model, inputs.valid, users)
        return _validation_ndcg(scorer, inputs, ev)

    result = fit(
        model,
        batches,
        validate,
        cfg,
        seed,
        checkpoint=checkpoint,
        description=f"{kind}/{variant}/{seed}",
        on_epoch=on_epoch,
    )
    return model, users, result


def _train_facts(result) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "history": result.history,  # per epoch: loss and validation NDCG@10 (tracking, plots)
    }


def train_text_matching(
    seed: int,
    cfg: RecommenderConfig,
    ev: EvalConfig,
    inputs: StageInputs,
    source: str = FILE_SOURCE,
) -> list[dict[str, Any]]:
    """Text matching trains on the user vectors at cutoffs before each user's validation item."""
    data, users = inputs.data, inputs.user_index(source)
    pairs = [
        (row, cutoff) for (row, cutoff) in users.rows if 0 < cutoff < data.cutoff(row, "valid")
    ]
    if not pairs:
        message = (
            f"text matching needs user vectors at training cutoffs (before each user's "
            f"validation item); {source!r} has none (add 'train' to student.cutoffs / "
            "teacher.cutoffs; for a single step: answers with the three steps)"
        )
        if source == FILE_SOURCE:
            raise DataError(message)
        log.warning("%s: skipped", message)  # one missing row, not a failed pipeline
        return []
    text = torch.as_tensor(users.matrix[[users.rows[p] for p in pairs]])
    targets = torch.as_tensor([int(data.sequences[row][cutoff]) for row, cutoff in pairs])
    set_seed(seed)
    model = TextMatching(inputs.item_text, cfg.dim, cfg.loss, cfg.bce_negatives)
    model.to(resolve_device(cfg.device))

    def batches(rng: np.random.Generator):
        order = torch.as_tensor(rng.permutation(len(targets)))
        for start in range(0, len(order), cfg.batch_size):
            pick = order[start : start + cfg.batch_size]
            yield text[pick], targets[pick]

    def validate() -> float:
        scorer = _matching_scorer(model, inputs.valid, users)
        return _validation_ndcg(scorer, inputs, ev)

    result = fit(model, batches, validate, cfg, seed, description=f"text_matching/{source}/{seed}")
    scores = _evaluate_splits(
        lambda split_inputs: _matching_scorer(model, split_inputs, users), inputs, ev
    )
    label = "rationale" if source == FILE_SOURCE else source
    return _rows("text_matching", label, seed, scores, ev.ks, _train_facts(result))


def popularity_rows(inputs: StageInputs, ev: EvalConfig) -> list[dict[str, Any]]:
    model = Popularity(torch.as_tensor(inputs.data.item_popularity()))
    scores = _evaluate_splits(
        lambda split_inputs: (
            lambda part: model.full_sort_predict(torch.as_tensor(split_inputs.histories[part]))
        ),
        inputs,
        ev,
    )
    return _rows("popularity", "id", None, scores, ev.ks, {})


def run_recommenders(
    cfg: RecommenderConfig,
    ev: EvalConfig,
    data_folder: Path,
    out_folder: Path,
    *,
    item_vectors: Path | None = None,
    user_vectors: Path | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate everything configured; write and return the metric rows.

    The library entry point for your own vector files (no LLM stages): runs one after the other
    in this process. `slim run` goes through the per-run tasks instead (`cfg.workers` at once).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_folder.mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(cfg, ev, data_folder, out_folder, item_vectors, user_vectors)
    rows: list[dict[str, Any]] = []
    for spec in run_specs(cfg, [FILE_SOURCE]):
        rows += run_one(spec, cfg, ev, inputs, out_folder / "checkpoints")
    write_metrics(rows, out_folder / "metrics.parquet")
    return rows


def run_one(
    spec: RunSpec,
    cfg: RecommenderConfig,
    ev: EvalConfig,
    inputs: StageInputs,
    checkpoints: Path,
) -> list[dict[str, Any]]:
    """Train and evaluate one planned run; backbones keep their best weights in `checkpoints`."""
    if spec.model == "popularity":
        return popularity_rows(inputs, ev)
    if spec.model == "text_matching":
        return train_text_matching(spec.seed, cfg, ev, inputs, spec.source or FILE_SOURCE)
    return train_sequential(
        spec.model,
        spec.variant,
        spec.seed,
        cfg,
        ev,
        inputs,
        checkpoint=checkpoints / f"{spec.name}.pt",
        source=spec.source,
    )


def write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        duckdb.from_arrow(table).write_parquet(str(tmp))
