"""Sequential recommenders (SASRec, GRU4Rec, SRGNN), SLIM's feature fusion, text matching, popularity.

One compact class per model with RecBole's interface: `forward`, `calculate_loss`, `predict`
(scores of given candidates) and `full_sort_predict` (scores of every item; column 0 is
padding and scores -inf).

Feature fusion as the SLIM paper writes it, shared by both backbones:
    item side  z_i = g_f([g_l(z_i_text) ; z_i_id])
    user side  s_u = g_f([g_l(s_u_text) ; s_u_seq])
with g_l a projection of a text vector to the ID dimension and g_f a linear fusion layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Fusion(nn.Module):
    """g_f([g_l(text) ; base]): project a text vector to `dim`, concatenate, fuse linearly."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.g_l = nn.Linear(text_dim, dim)
        self.g_f = nn.Linear(2 * dim, dim)

    def forward(self, text: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.g_f(torch.cat([self.g_l(text), base], dim=-1))

    @torch.no_grad()
    def start_as_base(self) -> None:
        """Set g_f to pass `base` through unchanged plus the text's (randomly drawn) share."""
        dim = self.g_f.out_features
        self.g_f.weight[:, dim:].copy_(torch.eye(dim))
        self.g_f.bias.zero_()


class ItemRepresentation(nn.Module):
    """z_i for every item: an ID embedding, fused with the item's text vector when given.

    `sparse`: `rows` gives the ID table a sparse gradient, for a loss that reads a few rows a
    step (BCE); its optimizer is then SparseAdam (`rec.train.optimizers`), which updates only
    those rows but takes no weight decay. Dense Adam rewrites the whole table every step: an
    SASRec BCE step took 100 ms at 10k items and 1,917 ms at 800k, 103 ms at both with sparse
    rows (docs/benchmarks.md, "Scale").
    """

    def __init__(
        self, n_items: int, dim: int, item_text: torch.Tensor | None = None, sparse: bool = False
    ):
        super().__init__()
        self.sparse = sparse
        self.id_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()  # normal_ overwrote the padding row
        self.fusion = None
        if item_text is not None:
            self.register_buffer("item_text", item_text.float(), persistent=False)
            self.fusion = Fusion(item_text.shape[1], dim)

    def forward(self) -> torch.Tensor:
        table = self.id_embedding.weight
        if self.fusion is not None:
            table = self.fusion(self.item_text, table)
            table = torch.cat([torch.zeros_like(table[:1]), table[1:]])  # padding stays zero
        return table

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """z_i of `ids` alone ([..., dim]; padding 0 is zero), without the whole table."""
        base = F.embedding(ids, self.id_embedding.weight, padding_idx=0, sparse=self.sparse)
        if self.fusion is None:
            return base
        return self.fusion(self.item_text[ids], base) * (ids > 0)[..., None]


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `states @ table.T` against `targets` (column 0, padding, never a
    class), holding `rows` rows of logits at a time: forward keeps each row's log-sum-exp, and
    backward computes the logits again a chunk at a time. The whole [rows x items] matrix is
    what full softmax otherwise holds, twice with its gradient: 10.1 GB at batch 64 x 50
    positions over 792k items (docs/benchmarks.md, "Scale"); one more matmul buys that back."""

    @staticmethod
    def forward(ctx, states, table, targets, rows: int):  # type: ignore[override]
        lse = torch.empty(len(states), dtype=states.dtype, device=states.device)
        for start in range(0, len(states), rows):
            lse[start : start + rows] = torch.logsumexp(
                _logits(states[start : start + rows], table), 1
            )
        ctx.save_for_backward(states, table, targets, lse)
        ctx.rows = rows
        return (lse - (states * table[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        states, table, targets, lse = ctx.saved_tensors
        scale = grad / len(states)
        d_states, d_table = torch.empty_like(states), torch.zeros_like(table)
        for start in range(0, len(states), ctx.rows):
            part = slice(start, start + ctx.rows)
            # d loss / d logits: softmax minus the target's one-hot, over the rows
            p = torch.exp(_logits(states[part], table) - lse[part, None]) * scale
            d_states[part] = p @ table
            d_table += p.T @ states[part]
        d_states -= scale * table[targets]
        d_table.index_add_(0, targets, -scale * states)
        return d_states, d_table, None, None


def _logits(states: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    logits = states @ table.T
    logits[:, 0] = float("-inf")
    return logits


class SequentialRecommender(nn.Module):
    """Shared parts: item table, optional user-side fusion, losses and scoring."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        *,
        item_text: torch.Tensor | None = None,
        user_text_dim: int | None = None,
        loss: str = "ce",
        bce_negatives: int = 1,
        sparse_items: bool = False,
        logits_memory_mb: int = 256,
    ):
        super().__init__()
        self.n_items = n_items
        self.logit_cells = logits_memory_mb * 2**20 // 4  # float32 logits a CE step may hold
        # Only BCE reads rows alone; CE's logits take the whole table (a dense gradient).
        sparse = sparse_items and loss == "bce"
        self.items = ItemRepresentation(n_items, dim, item_text, sparse=sparse)
        self.user_fusion = Fusion(user_text_dim, dim) if user_text_dim else None
        self.loss = loss
        self.bce_negatives = bce_negatives

    # Whether `encode` gives a state at every position (each seeing only its past), so that one
    # window trains a target at every position; if not, training reads every prefix as its own row.
    every_position = True
    # Whether a batch may be cut to its longest history: true where padding changes no score.
    cuts_padding = True

    def encode(self, item_emb: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] item embeddings -> [B, P, dim] states of the last P positions."""
        raise NotImplementedError

    def forward(
        self,
        item_seq: torch.Tensor,
        user_text: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """User states at the last P positions, [B, P, dim]: every position (P = L) for the
        causal models, the last one only (P = 1) for SRGNN. `user_text` is [B, L, text_dim];
        `table`, the whole item table where the caller has it (else the rows are looked up)."""
        item_emb = self.items.rows(item_seq) if table is None else table[item_seq]
        states = self.encode(item_emb, item_seq)
        if self.user_fusion is not None:
            if user_text is None:
                raise ValueError("this model fuses a user-side text vector: pass user_text")
            states = self.user_fusion(user_text[:, -states.shape[1] :], states)
        return states

    def calculate_loss(
        self, item_seq: torch.Tensor, targets: torch.Tensor, user_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        table = self.items() if self.loss == "ce" else None  # BCE reads only the rows it needs
        states = self.forward(item_seq, user_text, table)
        targets = targets[:, -states.shape[1] :]
        mask = targets > 0
        states, targets = states[mask], targets[mask]
        if table is not None:
            if len(states) * len(table) <= self.logit_cells:
                return F.cross_entropy(_logits(states, table), targets)
            rows = max(1, self.logit_cells // len(table))
            return ChunkedCrossEntropy.apply(states, table, targets, rows)
        # BCE with uniformly sampled negatives (a negative may rarely equal the target, as in
        # RecBole's and the SASRec paper's sampling).
        negatives = torch.randint(
            1, self.n_items + 1, (len(targets), self.bce_negatives), device=targets.device
        )
        positive = (states * self.items.rows(targets)).sum(-1)
        negative = torch.einsum("nd,nkd->nk", states, self.items.rows(negatives))
        return F.binary_cross_entropy_with_logits(
            torch.cat([positive[:, None], negative], dim=1),
            torch.cat([torch.ones_like(positive[:, None]), torch.zeros_like(negative)], dim=1),
        )

    def full_sort_predict(
        self, item_seq: torch.Tensor, user_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of every item for the state after the last position; `user_text` [B, text_dim]."""
        table = self.items()
        text = (
            None if user_text is None else user_text[:, None, :].expand(-1, item_seq.shape[1], -1)
        )
        scores = self.forward(item_seq, text, table)[:, -1] @ table.T
        scores[:, 0] = float("-inf")
        return scores

    def predict(
        self,
        item_seq: torch.Tensor,
        candidates: torch.Tensor,
        user_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores of the given candidate items, [B, C]."""
        return self.full_sort_predict(item_seq, user_text).gather(1, candidates)


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommendation (Kang & McAuley, 2018), as RecBole builds it.

    Post-LN transformer blocks, GELU, every Linear and Embedding drawn from normal(0, 0.02)
    (RecBole's `_init_weights`). PyTorch's defaults instead give the position table normal(0, 1),
    50x the item table: the item signal drowns under the positions, and on sparse data the model
    learns popularity and stops (docs/benchmarks.md, the SASRec ablation).

    Positions count back from the newest item (the newest is always `max_len - 1`), so a batch
    cut to its longest history scores exactly as the full `max_len` window does.
    """

    def __init__(
        self,
        n_items: int,
        dim: int = 64,
        *,
        max_len: int = 50,
        layers: int = 2,
        heads: int = 2,
        inner_dim: int = 256,
        dropout: float = 0.2,
        **fusion_and_loss,
    ):
        super().__init__(n_items, dim, **fusion_and_loss)
        self.heads = heads
        self.max_len = max_len
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            inner_dim,
            dropout,
            activation="gelu",
            batch_first=True,
            layer_norm_eps=1e-12,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for module in [self.position, self.transformer]:
            module.apply(_normal_init)
        for block in self.transformer.layers:  # MultiheadAttention's packed q/k/v projection
            nn.init.normal_(block.self_attn.in_proj_weight, std=0.02)
            nn.init.zeros_(block.self_attn.in_proj_bias)
        # The user-side fusion starts as the backbone's state plus the vector's drawn share. From
        # PyTorch's draw every user-vector row (SLIM, zeros, history) sat 1.4 NDCG@10 sampled
        # under item text on the Scientific sample; now level (docs/benchmarks.md, "The user-side
        # fusion starts as the backbone's state").
        if self.user_fusion is not None:
            self.user_fusion.start_as_base()

    def encode(self, item_emb: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        length = item_seq.shape[1]
        positions = torch.arange(self.max_len - length, self.max_len, device=item_seq.device)
        hidden = self.dropout(self.norm(item_emb + self.position(positions)))
        # Causal and padding mask in one additive mask. Every position may see itself, so rows of
        # left padding are never fully masked (a fully masked row turns into NaN in PyTorch's
        # inference fast path).
        eye = torch.eye(length, dtype=torch.bool, device=item_seq.device)
        blocked = torch.triu(
            torch.ones(length, length, dtype=torch.bool, device=item_seq.device), 1
        )
        blocked = (blocked[None] | (item_seq == 0)[:, None, :]) & ~eye
        mask = torch.zeros(blocked.shape, device=item_seq.device).masked_fill(
            blocked, float("-inf")
        )
        return self.transformer(hidden, mask=mask.repeat_interleave(self.heads, dim=0))


def _normal_init(module: nn.Module) -> None:
    """RecBole's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class GRU4Rec(SequentialRecommender):
    """Session-based recommendation with recurrent networks (Hidasi et al., 2016)."""

    def __init__(
        self,
        n_items: int,
        dim: int = 64,
        *,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.2,
        **fusion_and_loss,
    ):
        super().__init__(n_items, dim, **fusion_and_loss)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, dim)
        # The item text's fusion starts as the ID model (g_f passes the ID embedding through;
        # the text adds to it as it learns). From PyTorch's default draw, tuned GRU4Rec + item
        # text scored under tuned ID on Scientific: 5.40 against 5.56, now 5.62
        # (docs/benchmarks.md, "GRU4Rec + item text: the fusion starts as the ID model").
        if self.items.fusion is not None:
            self.items.fusion.start_as_base()

    # The GRU runs over the whole left-padded window, so its state at the first item tells how
    # long the history is. Read as a packed sequence from the first item instead, Scientific fell
    # from 4.78% to 4.40 ± 0.07% NDCG@10 (docs/benchmarks.md): batches keep their full width.
    cuts_padding = False

    def encode(self, item_emb: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.dropout(item_emb))
        return self.out(states)


class SRGNN(SequentialRecommender):
    """Session-based recommendation with graph neural networks (Wu et al., AAAI 2019).

    Each history is a graph of its distinct items with an edge for every consecutive pair; a
    gated graph layer mixes each item with its in- and out-neighbours (degree-normalised), and
    the user state fuses an attention-pooled summary of the history with the newest item. The
    graph is built in batch from the [B, L, L] table of equal items (RecBole loops over rows in
    NumPy). One state per history, so training reads every prefix as its own row.
    """

    every_position = False

    def __init__(self, n_items: int, dim: int = 64, *, steps: int = 1, **fusion_and_loss):
        super().__init__(n_items, dim, **fusion_and_loss)
        self.steps = steps
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.query_last = nn.Linear(dim, dim)
        self.query_each = nn.Linear(dim, dim)
        self.attention = nn.Linear(dim, 1, bias=False)
        self.transform = nn.Linear(2 * dim, dim)
        # The paper's and RecBole's uniform initialisation, the item text's fusion included:
        # with PyTorch's default there, SRGNN + item text overfitted by epoch 4-6 on ml-100k and
        # scored under ID (docs/benchmarks.md, "SRGNN + item text: the fusion's initialisation").
        bound = 1.0 / dim**0.5
        for name, weight in self.named_parameters():
            if not name.startswith(("items.id_embedding", "user_fusion.")):
                nn.init.uniform_(weight, -bound, bound)

    def encode(self, item_emb: torch.Tensor, item_seq: torch.Tensor) -> torch.Tensor:
        batch, length, dim = item_emb.shape
        real = item_seq > 0
        # Node of each position: the first position holding the same item.
        node = (item_seq[:, :, None] == item_seq[:, None, :]).int().argmax(-1)
        edge = (real[:, :-1] & real[:, 1:]).float()
        adjacency = torch.zeros(batch, length * length, device=item_seq.device)
        adjacency.scatter_add_(1, node[:, :-1] * length + node[:, 1:], edge)
        adjacency = adjacency.view(batch, length, length).clamp(max=1.0)  # [from, to]
        incoming = adjacency.transpose(1, 2) / adjacency.sum(1)[:, :, None].clamp(min=1.0)
        outgoing = adjacency / adjacency.sum(2, keepdim=True).clamp(min=1.0)
        hidden = item_emb
        for _ in range(self.steps):
            message = torch.cat(
                [incoming @ self.edge_in(hidden), outgoing @ self.edge_out(hidden)], dim=-1
            )
            hidden = self.cell(message.reshape(-1, 2 * dim), hidden.reshape(-1, dim))
            hidden = hidden.view(batch, length, dim)
        states = hidden.gather(1, node[:, :, None].expand(-1, -1, dim))
        last = states[:, -1]
        weights = self.attention(
            torch.sigmoid(self.query_last(last)[:, None] + self.query_each(states))
        )
        summary = (weights * states * real[:, :, None]).sum(1)
        return self.transform(torch.cat([summary, last], dim=-1))[:, None]


class TextMatching(nn.Module):
    """ID-agnostic matching: z_i = g_t(z_i_text), s_u = g_t(s_u_text), score = s_u . z_i.

    No item ids are learned, so items never seen in training (cold items) rank like any other.
    """

    def __init__(
        self, item_text: torch.Tensor, dim: int = 64, loss: str = "ce", bce_negatives: int = 1
    ):
        super().__init__()
        self.register_buffer("item_text", item_text.float(), persistent=False)
        self.g_t = nn.Linear(item_text.shape[1], dim)
        self.n_items = item_text.shape[0] - 1
        self.loss = loss
        self.bce_negatives = bce_negatives

    def forward(self, user_text: torch.Tensor) -> torch.Tensor:
        return self.g_t(user_text)

    def calculate_loss(self, user_text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scores = self.full_sort_predict(user_text)
        if self.loss == "ce":
            return F.cross_entropy(scores, targets)
        negatives = torch.randint(
            1, self.n_items + 1, (len(targets), self.bce_negatives), device=targets.device
        )
        picked = scores.gather(1, torch.cat([targets[:, None], negatives], dim=1))
        labels = torch.zeros_like(picked)
        labels[:, 0] = 1
        return F.binary_cross_entropy_with_logits(picked, labels)

    def full_sort_predict(self, user_text: torch.Tensor) -> torch.Tensor:
        scores = self.forward(user_text) @ self.g_t(self.item_text).T
        scores[:, 0] = float("-inf")
        return scores

    def predict(self, user_text: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.full_sort_predict(user_text).gather(1, candidates)


class Popularity(nn.Module):
    """Most popular items in training: the floor every learned model must clear."""

    def __init__(self, counts: torch.Tensor):
        super().__init__()
        self.register_buffer("counts", counts.float(), persistent=False)

    def full_sort_predict(
        self, item_seq: torch.Tensor, user_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        scores = self.counts.expand(item_seq.shape[0], -1).clone()
        scores[:, 0] = float("-inf")
        return scores
