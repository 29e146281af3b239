"""Recommender inputs from the data stage: chronological sequences, training windows, eval inputs.

Training uses every interaction before a user's validation item (from `interactions.parquet`,
not only the truncated `sequences`), cut into windows of `max_len` from the newest end, and
predicts the next item at every position (SASRec's original training). Validation ranks the
valid item from the history before it; test ranks the test item from the history before it
(which includes the valid item).

A *cutoff* is the 0-based position of a target in the user's chronological sequence, i.e. the
number of interactions before it: the key of the user-side text vector used to predict it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np

from slim_core.errors import DataError


@dataclass(frozen=True)
class SequenceData:
    """Every user's chronological item ids (dense, 1..n_items) and leave-one-out targets."""

    n_items: int
    user_idx: np.ndarray  # [U] int64
    sequences: list[np.ndarray]  # full chronological sequence per user (train + valid + test)
    flat_items: np.ndarray | None = None  # the sequences end to end, when they are views of it

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.sequences), dtype=np.int64, count=self.n_users)

    @cached_property
    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(items, offsets): every sequence end to end, user u's at offsets[u]:offsets[u + 1]
        (`flat_items` where the loader kept them so, else a copy)."""
        offsets = np.r_[0, np.cumsum(self.lengths)]
        if self.flat_items is not None:
            return self.flat_items, offsets
        return np.concatenate([np.asarray(s, dtype=np.int64) for s in self.sequences]), offsets

    def train_part(self, u: int) -> np.ndarray:
        return self.sequences[u][:-2]

    def target(self, u: int, split: str) -> int:
        return int(self.sequences[u][-2 if split == "valid" else -1])

    def cutoff(self, u: int, split: str, train_lead: int = 0) -> int:
        """Position of the split's target: test is the last item, valid the one before it, and
        train the last training item (a rationale there has the training items before it), or
        `train_lead` items earlier, but never before the second item (position 1)."""
        n = len(self.sequences[u])
        if split == "train":
            return max(min(1, n - 3), n - 3 - train_lead)
        return n - {"valid": 2, "test": 1}[split]

    def item_popularity(self) -> np.ndarray:
        """Training interactions per item (index 0 = padding, count 0)."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for u in range(self.n_users):
            np.add.at(counts, self.train_part(u), 1)
        return counts


def load_sequence_data(data_folder: Path) -> SequenceData:
    """Read the data stage's `interactions` and `items` into per-user sequences."""
    interactions = Path(data_folder) / "interactions.parquet"
    items = Path(data_folder) / "items.parquet"
    for path in (interactions, items):
        if not path.is_file():
            raise DataError("artifact not found: run the data stage first", path=path)
    with duckdb.connect() as con:
        n_items = con.execute("SELECT count(*) FROM read_parquet(?)", [str(items)]).fetchone()[0]
        # Two flat columns, not a list per user: Python lists cost ~130 bytes an interaction
        # (6.5 GB at 50M, benchmarks/scale.py); these cost 16.
        columns = con.execute(
            "SELECT user_idx, item_idx FROM read_parquet(?) ORDER BY user_idx, position",
            [str(interactions)],
        ).fetchnumpy()
    users = np.asarray(columns["user_idx"], dtype=np.int64)
    if not len(users):
        raise DataError("no users: the split is empty", path=interactions)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    short = np.flatnonzero(lengths < 3)
    if len(short):
        raise DataError(
            f"{len(short)} user(s) have fewer than 3 interactions (first: {users[starts[short[0]]]});"
            " leave-one-out needs a train, a valid and a test item",
            path=interactions,
        )
    flat = np.asarray(columns["item_idx"], dtype=np.int64)
    return SequenceData(
        n_items=n_items,
        user_idx=users[starts],
        sequences=np.split(flat, starts[1:]),  # views of one array
        flat_items=flat,
    )


@dataclass(frozen=True)
class TrainingWindows:
    """Training rows, each held as (user, end) and gathered a batch at a time by `rows`.

    Row r reads the `max_len` positions before `ends[r]` of its user's sequence, left-padded:
    inputs[j] predicts targets[j], the item after it (0 = no target there); with `last_only`
    only the last column has a target (one row per prefix). Why not every row as padded arrays:
    three int64 [W, max_len] arrays cost 1.2 KB a row, 4.8 GB at 50M interactions
    (benchmarks/scale.py); this costs 16 bytes a row beside the sequences' own 8 an item.
    """

    items: np.ndarray  # every sequence end to end (SequenceData.layout)
    offsets: np.ndarray  # [U + 1]: user u's items are items[offsets[u]:offsets[u + 1]]
    users: np.ndarray  # [W] row index into SequenceData (0..U-1)
    ends: np.ndarray  # [W] position of the row's last target in its user's sequence
    max_len: int
    last_only: bool = False

    def __len__(self) -> int:
        return len(self.users)

    def rows(self, pick: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, cutoffs) [len(pick), max_len] of the picked rows; a cutoff is the
        target's position in its user's sequence (-1 where no target)."""
        ends = self.ends[pick][:, None]
        positions = ends - self.max_len + np.arange(self.max_len)  # of each column's input
        filled = positions >= 0
        at = self.offsets[self.users[pick]][:, None] + np.maximum(positions, 0)
        inputs = np.where(filled, self.items[at], 0)
        has_target = filled & (positions == ends - 1) if self.last_only else filled
        targets = np.where(has_target, self.items[at + has_target], 0)
        return inputs, targets, np.where(has_target, positions + 1, -1)

    # Every row at once: for small data and tests; training gathers batches with `rows`.
    @property
    def inputs(self) -> np.ndarray:
        return self.rows(slice(None))[0]

    @property
    def targets(self) -> np.ndarray:
        return self.rows(slice(None))[1]

    @property
    def cutoffs(self) -> np.ndarray:
        return self.rows(slice(None))[2]


def _rows_per_user(data: SequenceData, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user of each row, its rank within the user's rows) for `counts[u]` rows per user."""
    users = np.repeat(np.arange(data.n_users), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return users, np.arange(len(users)) - first


def _no_pairs() -> DataError:
    return DataError(
        "no training pairs: every user has a single training item; use more interactions "
        "per user (data.k_core_users)"
    )


def training_windows(data: SequenceData, max_len: int) -> TrainingWindows:
    """Windows of at most `max_len` (input, next item) pairs over each user's training part,
    cut from its newest end: (input train[j] -> target train[j + 1], cutoff j + 1)."""
    pairs = np.maximum(data.lengths - 3, 0)  # the train part is all but the last two items
    users, rank = _rows_per_user(data, -(-pairs // max_len))
    if not len(users):
        raise _no_pairs()
    ends = pairs[users] - max_len * rank  # the newest window first, as SASRec's original
    return TrainingWindows(*data.layout, users, ends, max_len)


def training_prefixes(data: SequenceData, max_len: int) -> TrainingWindows:
    """Every prefix of each user's training part as its own row: its newest `max_len` items,
    left-padded, with the next item as the only target (in the last column). For models with
    one state per history (SRGNN); RecBole trains every sequential model this way."""
    users, rank = _rows_per_user(data, np.maximum(data.lengths - 3, 0))
    if not len(users):
        raise _no_pairs()
    return TrainingWindows(*data.layout, users, rank + 1, max_len, last_only=True)


@dataclass(frozen=True)
class EvalInputs:
    """One row per user: the last `max_len` items before the split's target."""

    users: np.ndarray  # [U]
    histories: np.ndarray  # [U, L], left-padded
    targets: np.ndarray  # [U]
    cutoffs: np.ndarray  # [U]
    full_histories: list[np.ndarray]  # everything before the target (for excluding history)

    def part(self, rows: slice) -> EvalInputs:
        """The users in `rows` alone (a partition of the evaluation)."""
        return EvalInputs(
            self.users[rows],
            self.histories[rows],
            self.targets[rows],
            self.cutoffs[rows],
            self.full_histories[rows],
        )


def eval_inputs(data: SequenceData, split: str, max_len: int) -> EvalInputs:
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    drop = 2 if split == "valid" else 1
    befores = [seq[:-drop] for seq in data.sequences]
    histories = np.stack([np.pad(b[-max_len:], (max_len - len(b[-max_len:]), 0)) for b in befores])
    return EvalInputs(
        users=np.arange(data.n_users),
        histories=histories,
        targets=np.array([data.target(u, split) for u in range(data.n_users)]),
        cutoffs=np.array([data.cutoff(u, split) for u in range(data.n_users)]),
        full_histories=befores,
    )


class UserVectorIndex:
    """Per-(user, cutoff) text vectors, looked up *as of* a cutoff; row 0 is the zero vector.

    A target at cutoff t gets the vector with the largest cutoff <= t: that rationale was written
    from items before t only (no leakage), and a user with a rationale at the validation cutoff
    keeps it for the test target. Users (or positions) with no rationale yet get the zero vector.
    """

    def __init__(self, data: SequenceData, keys: dict[tuple[int, int], np.ndarray], dim: int):
        position = {int(u): row for row, u in enumerate(data.user_idx)}
        self.matrix = np.zeros((len(keys) + 1, dim), dtype=np.float32)
        self.rows: dict[tuple[int, int], int] = {}
        for n, ((user, cutoff), vector) in enumerate(sorted(keys.items()), start=1):
            if user in position:
                self.matrix[n] = vector
                self.rows[(position[user], cutoff)] = n
        # (user row, cutoff) as one sortable int64 key, so that a lookup is one searchsorted.
        ordered = sorted(self.rows.items())
        self._key_users = np.array([u for (u, _), _ in ordered], dtype=np.int64)
        self._keys = self._key_users * _KEY_STRIDE + np.array(
            [c for (_, c), _ in ordered], dtype=np.int64
        )
        self._key_rows = np.array([n for _, n in ordered], dtype=np.int64)

    @property
    def users(self) -> int:
        """How many users have at least one vector."""
        return len(np.unique(self._key_users))

    def lookup(self, users: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
        """Row of the latest vector at or before each (user row, cutoff); 0 where none."""
        if not len(self._keys):
            return np.zeros(cutoffs.shape, dtype=np.int64)
        users = np.broadcast_to(users, cutoffs.shape).astype(np.int64)
        pos = np.searchsorted(self._keys, users * _KEY_STRIDE + cutoffs, side="right") - 1
        found = np.maximum(pos, 0)
        same_user = (pos >= 0) & (self._key_users[found] == users)
        return np.where(same_user, self._key_rows[found], 0)


_KEY_STRIDE = 1 << 32  # above any cutoff; a cutoff of -1 (no target) sorts before the user's keys
