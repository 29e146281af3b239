"""Training with early stopping on validation NDCG@10, and evaluation under both protocols."""

from __future__ import annotations

import logging
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from slim_core.config import RecommenderConfig
from slim_core.rec.data import EvalInputs, TrainingWindows, UserVectorIndex
from slim_core.rec.metrics import full_ranks, metrics_from_ranks, sampled_ranks
from storage import atomic_path

log = logging.getLogger("slim_core.rec")

Batch = tuple[torch.Tensor, ...]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`recommender.device`: "auto" is the CUDA GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_ndcg: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs_run, 1)


def fit(
    model: nn.Module,
    batches: Callable[[np.random.Generator], Iterator[Batch]],
    validate: Callable[[], float],
    cfg: RecommenderConfig,
    seed: int,
    *,
    checkpoint: Path | None = None,
    description: str = "training",
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` on `batches(rng)` each epoch; keep the weights of the best validation score.

    `validate()` returns validation NDCG@10; training stops after `cfg.patience` epochs without a
    better one. The best weights are restored into `model` (and saved to `checkpoint`).
    `on_epoch(epoch, score)` sees every validation score (a tuner's pruner stops a trial there).
    """
    set_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    steps = optimizers(model, cfg)
    best, best_epoch, best_state, waited = -1.0, 0, None, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(
        range(1, cfg.max_epochs + 1),
        desc=description,
        leave=False,
        disable=None if multiprocessing.parent_process() is None else True,  # none in workers
    )
    for epoch in bar:
        epoch_started = time.perf_counter()
        loss = _train_epoch(model, batches(rng), steps, device)
        model.eval()
        with torch.no_grad():
            score = validate()
        history.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": score})
        if on_epoch is not None:
            on_epoch(epoch, score)
        bar.set_postfix(
            loss=f"{loss:.4f}", valid_ndcg=f"{score:.4f}", best=f"{max(best, score):.4f}"
        )
        # Without a bar (not a terminal: a scheduler's log, the Prefect UI) every epoch is a log
        # line, as an epoch can take minutes; beside a bar, a heartbeat every 10 for the UI.
        if bar.disable or epoch % 10 == 0:
            log.info(
                "%s: epoch %d, loss %.4f, valid NDCG@10 %.4f (best %.4f at %d), %.1f s",
                description,
                epoch,
                loss,
                score,
                max(best, score),
                best_epoch if best >= score else epoch,
                time.perf_counter() - epoch_started,
            )
        if score > best:
            best, best_epoch, waited = score, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if checkpoint is not None:
                with atomic_path(checkpoint) as tmp:
                    torch.save(
                        {"epoch": epoch, "valid_ndcg@10": score, "state_dict": best_state}, tmp
                    )
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    log.info(
        "%s: best valid NDCG@10 %.4f at epoch %d of %d (%.1f s)",
        description,
        best,
        best_epoch,
        len(history),
        seconds,
    )
    return TrainResult(best_epoch, best, len(history), seconds, history)


def optimizers(model: nn.Module, cfg: RecommenderConfig) -> list[torch.optim.Optimizer]:
    """Adam; an item table with sparse rows (BCE, `ItemRepresentation.sparse`) gets SparseAdam,
    which updates only the rows a step read (and takes no weight decay)."""
    items = getattr(model, "items", None)
    table = items.id_embedding.weight if items is not None and items.sparse else None
    rest = [p for p in model.parameters() if p is not table]
    steps: list[torch.optim.Optimizer] = [
        torch.optim.Adam(rest, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ]
    if table is not None:
        steps.append(torch.optim.SparseAdam([table], lr=cfg.lr))
    return steps


def _train_epoch(
    model: nn.Module,
    batches: Iterator[Batch],
    steps: list[torch.optim.Optimizer],
    device: torch.device,
) -> float:
    """One pass over `batches` in train mode; the mean batch loss."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        loss = model.calculate_loss(*(part.to(device) for part in batch))
        for step in steps:
            step.zero_grad()
        loss.backward()
        for step in steps:
            step.step()
        total, count = total + loss.item(), count + 1
    return total / max(count, 1)


def window_batches(
    windows: TrainingWindows,
    batch_size: int,
    users: UserVectorIndex | None = None,
    cut_padding: bool = True,
) -> Callable[[np.random.Generator], Iterator[Batch]]:
    """Shuffled (item_seq, targets[, user_text]) batches of training rows, gathered a batch at a
    time and cut to their longest history unless `cut_padding` is off. With `users`, each
    target reads its user's latest text vector as of its cutoff."""
    matrix = None if users is None else torch.as_tensor(users.matrix)

    def batches(rng: np.random.Generator) -> Iterator[Batch]:
        order = rng.permutation(len(windows))
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            inputs, targets, cutoffs = windows.rows(pick)
            seq, tgt = torch.as_tensor(inputs), torch.as_tensor(targets)
            start_column = trimmed_start(seq) if cut_padding else 0
            seq, tgt = seq[:, start_column:], tgt[:, start_column:]
            if users is None:
                yield seq, tgt
            else:
                rows = users.lookup(windows.users[pick][:, None], cutoffs[:, start_column:])
                yield seq, tgt, matrix[torch.as_tensor(rows)]

    return batches


def trimmed_start(item_seq: torch.Tensor) -> int:
    """First column of a left-padded batch that holds an item in some row.

    Cutting the all-padding columns changes no score (padding is masked, positions count from
    the newest item) and saves the work on them: Scientific's histories have a median of 6 items
    in a window of 50.
    """
    filled = (item_seq != 0).any(0)
    return int(filled.int().argmax()) if bool(filled.any()) else item_seq.shape[1] - 1


def _pad(rows: list[np.ndarray]) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = np.zeros((len(rows), width), dtype=np.int64)
    for n, r in enumerate(rows):
        out[n, : len(r)] = r
    return torch.as_tensor(out)


def score_all(
    score: Callable[[slice], torch.Tensor], n_users: int, batch_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    for start in range(0, n_users, batch_size):
        part = slice(start, min(start + batch_size, n_users))
        yield part, score(part)


def evaluate(
    score: Callable[[slice], torch.Tensor],
    inputs: EvalInputs,
    *,
    ks: list[int],
    exclude_history: bool,
    negatives: np.ndarray | None = None,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """Metrics of one split under full ranking and, given negatives, the sampled protocol.

    `score(rows)` returns [len(rows), n_items + 1] scores for those users.
    """
    ranks = rank_targets(
        score, inputs, exclude_history=exclude_history, negatives=negatives, batch_size=batch_size
    )
    return {protocol: metrics_from_ranks(r, ks) for protocol, r in ranks.items()}


def rank_targets(
    score: Callable[[slice], torch.Tensor],
    inputs: EvalInputs,
    *,
    exclude_history: bool,
    negatives: np.ndarray | None = None,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """0-based rank of every user's target, per protocol ("full", and "sampled" with negatives),
    scoring `batch_size` users at a time (`EvalConfig.users_per_batch`: the memory bound)."""
    full, sampled = [], []
    with torch.no_grad():
        for part, scores in score_all(score, len(inputs.users), batch_size):
            targets = torch.as_tensor(inputs.targets[part])
            history = _pad(inputs.full_histories[part]) if exclude_history else None
            full.append(full_ranks(scores, targets, history))
            if negatives is not None:
                sampled.append(sampled_ranks(scores, targets, torch.as_tensor(negatives[part])))
    result = {"full": torch.cat(full)}
    if negatives is not None:
        result["sampled"] = torch.cat(sampled)
    return result
