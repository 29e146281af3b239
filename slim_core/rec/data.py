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

    @property
    def n_users(self) -> int:
        return len(self.sequences)

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
    )


@dataclass(frozen=True)
class TrainingWindows:
    """Left-padded windows: inputs[w, j] predicts targets[w, j] (0 = no target there)."""

    users: np.ndarray  # [W] row index into SequenceData (0..U-1)
    inputs: np.ndarray  # [W, L]
    targets: np.ndarray  # [W, L]
    cutoffs: np.ndarray  # [W, L] cutoff of each target (-1 where no target)

    def __len__(self) -> int:
        return len(self.users)


def training_windows(data: SequenceData, max_len: int) -> TrainingWindows:
    """Windows of at most `max_len` (input, next item) pairs over each user's training part."""
    users, inputs, targets, cutoffs = [], [], [], []
    for u in range(data.n_users):
        train = data.train_part(u)
        # Pair j: input train[j] -> target train[j + 1], whose cutoff is j + 1.
        for end in range(len(train) - 1, 0, -max_len):
            start = max(0, end - max_len)
            x, y = train[start:end], train[start + 1 : end + 1]
            pad = max_len - len(x)
            users.append(u)
            inputs.append(np.pad(x, (pad, 0)))
            targets.append(np.pad(y, (pad, 0)))
            cutoffs.append(np.pad(np.arange(start + 1, end + 1), (pad, 0), constant_values=-1))
    if not users:
        raise DataError(
            "no training pairs: every user has a single training item; use more interactions "
            "per user (data.k_core_users)"
        )
    return TrainingWindows(
        users=np.asarray(users, dtype=np.int64),
        inputs=np.stack(inputs),
        targets=np.stack(targets),
        cutoffs=np.stack(cutoffs),
    )


def training_prefixes(data: SequenceData, max_len: int) -> TrainingWindows:
    """Every prefix of each user's training part as its own row: its newest `max_len` items,
    left-padded, with the next item as the only target (in the last column). For models with
    one state per history (SRGNN); RecBole trains every sequential model this way."""
    users, inputs, cutoffs = [], [], []
    for u in range(data.n_users):
        train = data.train_part(u)
        if len(train) < 2:
            continue
        padded = np.concatenate([np.zeros(max_len, dtype=np.int64), train])
        # Row j - 1 holds the max_len items before train[j], for j = 1 .. len(train) - 1.
        windows = np.lib.stride_tricks.sliding_window_view(padded, max_len)[1 : len(train)]
        users.append(np.full(len(windows), u, dtype=np.int64))
        inputs.append(windows)
        cutoffs.append(np.arange(1, len(train), dtype=np.int64))
    if not users:
        raise DataError(
            "no training pairs: every user has a single training item; use more interactions "
            "per user (data.k_core_users)"
        )
    inputs_all, cutoffs_all = np.concatenate(inputs), np.concatenate(cutoffs)
    users_all = np.concatenate(users)
    targets = np.zeros_like(inputs_all)
    targets[:, -1] = [data.sequences[u][c] for u, c in zip(users_all, cutoffs_all, strict=True)]
    last_cutoffs = np.full_like(inputs_all, -1)
    last_cutoffs[:, -1] = cutoffs_all
    return TrainingWindows(
        users=users_all, inputs=inputs_all, targets=targets, cutoffs=last_cutoffs
    )


@dataclass(frozen=True)
class EvalInputs:
    """One row per user: the last `max_len` items before the split's target."""

    users: np.ndarray  # [U]
    histories: np.ndarray  # [U, L], left-padded
    targets: np.ndarray  # [U]
    cutoffs: np.ndarray  # [U]
    full_histories: list[np.ndarray]  # everything before the target (for excluding history)


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
