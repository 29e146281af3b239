"""Recommenders end to end on tiny synthetic logs: learning, variants, text matching, bad input."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from slim_core.config import EvalConfig, RecommenderConfig
from slim_core.errors import DataError
from slim_core.rec.data import (
    SequenceData,
    eval_inputs,
    load_sequence_data,
    training_prefixes,
    training_windows,
)
from slim_core.rec.report import markdown_table, ndcg_bar_chart
from slim_core.rec.stage import load_inputs, load_negatives, run_recommenders
from slim_core.rec.train import rank_targets, window_batches
from slim_core.vectors import write_vectors
from tests.helpers import csv, run_stage

N_ITEMS = 40


def cyclic_log(n_users=60, length=8):
    """User u walks items u, u+1, u+2, ... (mod N_ITEMS): the next item follows from the last."""
    return [
        (f"u{u:03d}", f"i{(u + step) % N_ITEMS:02d}", step)
        for u in range(n_users)
        for step in range(length)
    ]


@pytest.fixture
def cyclic_data(write, tmp_path):
    path = write(
        "log.csv", csv("user_id,item_id,timestamp", *(f"{u},{i},{t}" for u, i, t in cyclic_log()))
    )
    result = run_stage(
        tmp_path / "run",
        {"format": "table", "interactions": str(path)},
        k_core_users=3,
        k_core_items=1,
    )
    return result


def small(**overrides) -> RecommenderConfig:
    base = {
        "dim": 32,
        "layers": 1,
        "heads": 1,
        "inner_dim": 64,
        "gru_hidden": 32,
        "dropout": 0.0,
        "max_len": 10,
        "lr": 5e-3,
        "batch_size": 64,
        "max_epochs": 150,
        "patience": 15,
        "seeds": [1],
    }
    return RecommenderConfig(**{**base, **overrides})


def test_windows_cover_every_training_pair(cyclic_data):
    data = load_sequence_data(cyclic_data.folder)
    windows = training_windows(data, max_len=4)
    pairs = sum(len(data.train_part(u)) - 1 for u in range(data.n_users))
    assert (windows.targets > 0).sum() == pairs
    # the cutoff of a target is its position in the user's sequence
    u, j = windows.users[0], np.flatnonzero(windows.targets[0])[0]
    assert data.sequences[u][windows.cutoffs[0, j]] == windows.targets[0, j]
    test = eval_inputs(data, "test", max_len=4)
    assert (test.targets == [s[-1] for s in data.sequences]).all()
    assert (test.histories[:, -1] == [s[-2] for s in data.sequences]).all()  # valid item is history


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "srgnn"])
def test_model_overfits_tiny_data_to_perfect_hit(cyclic_data, tmp_path, model):
    rows = run_recommenders(
        small(models=[model], variants=["id"]),
        EvalConfig(sampled_negatives=20),
        cyclic_data.folder,
        tmp_path / "rec",
    )
    test = {r["protocol"]: r for r in rows if r["model"] == model and r["split"] == "test"}
    assert test["full"]["hit@10"] == 1.0
    assert test["sampled"]["hit@10"] == 1.0
    popularity = next(
        r
        for r in rows
        if r["model"] == "popularity" and r["split"] == "test" and r["protocol"] == "full"
    )
    assert popularity["hit@10"] < 0.5


def test_bce_loss_learns(cyclic_data, tmp_path):
    # BCE with a few sampled negatives learns more slowly than full softmax: more, smaller steps.
    cfg = small(
        models=["gru4rec"], variants=["id"], loss="bce", bce_negatives=4, batch_size=8, patience=30
    )
    rows = run_recommenders(
        cfg, EvalConfig(sampled_negatives=20), cyclic_data.folder, tmp_path / "rec"
    )
    test = next(
        r
        for r in rows
        if r["model"] == "gru4rec" and r["split"] == "test" and r["protocol"] == "full"
    )
    assert test["hit@10"] >= 0.9


@pytest.mark.parametrize("item_text", [False, True])
def test_a_bce_step_updates_only_the_item_rows_it_read(item_text):
    """BCE reads the input, target and negative rows of the item table alone: their gradient is
    sparse and SparseAdam moves those rows only, where dense Adam rewrote the whole table."""
    from slim_core.rec.models import SASRec
    from slim_core.rec.train import optimizers

    torch.manual_seed(0)
    text = torch.randn(N_ITEMS + 1, 8) if item_text else None
    model = SASRec(N_ITEMS, 16, max_len=4, loss="bce", bce_negatives=2, item_text=text,
                   sparse_items=True)  # fmt: skip
    seq, targets = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 3, 4]])
    ids = torch.arange(N_ITEMS + 1)
    assert torch.allclose(model.items.rows(ids), model.items(), atol=1e-6)  # the same z_i
    steps = optimizers(model, small(loss="bce"))
    assert [type(s).__name__ for s in steps] == ["Adam", "SparseAdam"]
    before = model.items.id_embedding.weight.detach().clone()
    torch.manual_seed(1)
    model.calculate_loss(seq, targets).backward()
    assert model.items.id_embedding.weight.grad.is_sparse
    read = set(model.items.id_embedding.weight.grad.coalesce().indices()[0].tolist())
    for step in steps:
        step.step()
    moved = (model.items.id_embedding.weight.detach() != before).any(1).nonzero()[:, 0].tolist()
    assert {1, 2, 3, 4} <= set(moved) <= read - {0} and len(moved) < N_ITEMS // 2


def test_the_stage_builds_sparse_item_rows_for_bce_without_weight_decay_only():
    from slim_core.rec.stage import build_model
    from slim_core.rec.train import optimizers

    def kinds(cfg):
        model = build_model("sasrec", "id", N_ITEMS, cfg, inputs=None)
        return [type(s).__name__ for s in optimizers(model, cfg)]

    assert kinds(small(loss="bce")) == ["Adam", "SparseAdam"]
    assert kinds(small(loss="bce", weight_decay=1e-4)) == ["Adam"]  # SparseAdam cannot decay
    assert kinds(small(loss="ce")) == ["Adam"]  # CE's logits read the whole table


def test_each_backbone_reads_its_own_depth_setting():
    """`layers` is SASRec's; GRU4Rec stacks `gru_layers` GRUs, SRGNN runs `gnn_steps` steps."""
    from slim_core.rec.stage import build_model

    cfg = small(layers=3, gru_layers=2, gnn_steps=4)
    assert len(build_model("sasrec", "id", N_ITEMS, cfg, inputs=None).transformer.layers) == 3
    assert build_model("gru4rec", "id", N_ITEMS, cfg, inputs=None).gru.num_layers == 2
    assert build_model("srgnn", "id", N_ITEMS, cfg, inputs=None).steps == 4


def test_a_ce_step_over_its_logits_memory_chunks_the_softmax_with_the_same_gradients():
    """Past `logits_memory_mb` the softmax runs a few positions at a time: the loss and every
    gradient are full softmax's (item text fused, so the table is not a leaf)."""
    from slim_core.rec.models import SASRec

    seq = torch.randint(0, N_ITEMS + 1, (6, 5))
    targets = torch.randint(0, N_ITEMS + 1, (6, 5))
    text = torch.randn(N_ITEMS + 1, 8)
    results = []
    for rows in (None, 7):  # all positions at once (256 MiB), then chunks of 7 positions
        torch.manual_seed(0)
        model = SASRec(N_ITEMS, 16, max_len=5, item_text=text)
        if rows:
            model.logit_cells = rows * (N_ITEMS + 1)  # a budget of 7 rows of logits
        model.eval()  # no dropout: the two passes see the same network
        loss = model.calculate_loss(seq, targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dense_loss, dense), (chunked_loss, chunked) = results
    assert torch.allclose(dense_loss, chunked_loss, atol=1e-6)
    assert dense.keys() == chunked.keys()
    for name in dense:
        assert torch.allclose(dense[name], chunked[name], atol=1e-6), name


def _item_vectors(folder, n_items, dim=8, seed=0, missing=()):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n_items, dim)).astype(np.float32)
    vectors = [None if idx in missing else matrix[idx - 1] for idx in range(1, n_items + 1)]
    path = folder / "item_vectors.parquet"
    write_vectors(path, {"item_idx": np.arange(1, n_items + 1, dtype=np.int32)}, vectors, dim=dim)
    return path, matrix


def _user_vectors(folder, data, item_matrix, noise=0.05, seed=0, skip_user=None):
    """A vector per (user, cutoff) close to the target item's vector: a perfect 'rationale'."""
    rng = np.random.default_rng(seed)
    users, cutoffs, vectors = [], [], []
    for row, seq in enumerate(data.sequences):
        if data.user_idx[row] == skip_user:
            continue
        for cutoff in range(1, len(seq)):
            users.append(data.user_idx[row])
            cutoffs.append(cutoff)
            vectors.append(
                item_matrix[seq[cutoff] - 1] + noise * rng.normal(size=item_matrix.shape[1])
            )
    path = folder / "user_vectors.parquet"
    write_vectors(
        path,
        {"user_idx": np.array(users, dtype=np.int32), "cutoff": np.array(cutoffs, dtype=np.int32)},
        np.array(vectors, dtype=np.float32),
    )
    return path


def test_text_variants_train_and_report(cyclic_data, tmp_path):
    data = load_sequence_data(cyclic_data.folder)
    items, matrix = _item_vectors(tmp_path, data.n_items)
    users = _user_vectors(tmp_path, data, matrix)
    cfg = small(
        models=["sasrec", "gru4rec", "srgnn"],
        variants=["id", "item_text", "user_text", "item_user_text"],
        max_epochs=3,
        text_matching=True,
        user_vectors=users,
        zero_vector_control=True,
    )
    rows = run_recommenders(
        cfg,
        EvalConfig(sampled_negatives=20),
        cyclic_data.folder,
        tmp_path / "rec",
        item_vectors=items,
        user_vectors=users,
    )
    seen = {(r["model"], r["variant"]) for r in rows}
    assert {
        ("sasrec", "item_user_text"),
        ("gru4rec", "user_text"),
        ("text_matching", "rationale"),
        ("sasrec", "item_user_text+zeros"),  # the control: same fusion, no rationale
        ("gru4rec", "user_text+zeros"),
        ("srgnn", "item_text"),
        ("srgnn", "item_user_text"),
    } <= seen
    assert ("text_matching", "rationale+zeros") not in seen  # nothing to match with zeros
    inputs = load_inputs(
        cfg, EvalConfig(sampled_negatives=20), cyclic_data.folder, tmp_path / "rec", items, users
    )
    control, given = inputs.user_index("zeros"), inputs.user_index("file")
    cutoffs = np.arange(1, 6)[None, :].repeat(len(data.user_idx), 0)
    rows_read = control.lookup(np.arange(len(data.user_idx))[:, None], cutoffs)
    assert not control.matrix.any() and not rows_read.any()  # every user reads the zero vector
    assert control.matrix.shape[1] == given.matrix.shape[1]
    table = markdown_table(rows)
    assert "| sasrec | item_text | 1 |" in table and "± " not in table  # one seed: no spread
    png = ndcg_bar_chart(rows, tmp_path / "ndcg.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rec" / "metrics.parquet").is_file()


def test_text_matching_ranks_items_never_seen_in_training(write, tmp_path):
    # 40 users walk disjoint item ranges; the last 10 items are only ever test targets.
    log = []
    for u in range(40):
        items = [(u * 3 + k) % 30 for k in range(4)] + [30 + u % 10]
        log += [(f"u{u:02d}", f"i{i:02d}", t) for t, i in enumerate(items)]
    path = write("cold.csv", csv("user_id,item_id,timestamp", *(f"{u},{i},{t}" for u, i, t in log)))
    result = run_stage(
        tmp_path / "run",
        {"format": "table", "interactions": str(path)},
        k_core_users=3,
        k_core_items=1,
    )
    data = load_sequence_data(result.folder)
    items, matrix = _item_vectors(tmp_path, data.n_items, dim=16, seed=3)
    users = _user_vectors(tmp_path, data, matrix, noise=0.05)
    cfg = small(
        models=[],
        variants=[],
        popularity=False,
        text_matching=True,
        user_vectors=users,
        max_epochs=100,
    )
    rows = run_recommenders(
        cfg,
        EvalConfig(sampled_negatives=10, exclude_history=False),
        result.folder,
        tmp_path / "rec",
        item_vectors=items,
        user_vectors=users,
    )
    cold = {int(data.sequences[u][-1]) for u in range(data.n_users)}
    trained = {int(s[c]) for s in data.sequences for c in range(1, len(s) - 2)}
    assert cold.isdisjoint(trained)  # every test target is a cold item
    test = next(r for r in rows if r["split"] == "test" and r["protocol"] == "full")
    assert test["hit@10"] >= 0.9


def test_text_variant_needs_text_for_every_item(cyclic_data, tmp_path):
    data = load_sequence_data(cyclic_data.folder)
    items, _ = _item_vectors(tmp_path, data.n_items, missing={3})
    with pytest.raises(DataError, match="item_vectors.parquet"):
        run_recommenders(
            small(models=["sasrec"], variants=["item_text"], max_epochs=1),
            EvalConfig(),
            cyclic_data.folder,
            tmp_path / "rec",
            item_vectors=items,
        )
    # ID only does not read item text at all.
    rows = run_recommenders(
        small(models=["sasrec"], variants=["id"], max_epochs=1),
        EvalConfig(sampled_negatives=5),
        cyclic_data.folder,
        tmp_path / "rec2",
        item_vectors=items,
    )
    assert rows


def test_user_vectors_missing_for_an_evaluated_user(cyclic_data, tmp_path):
    data = load_sequence_data(cyclic_data.folder)
    _, matrix = _item_vectors(tmp_path, data.n_items)
    users = _user_vectors(tmp_path, data, matrix, skip_user=int(data.user_idx[5]))
    with pytest.raises(DataError, match="user_vectors.parquet"):
        run_recommenders(
            small(models=["gru4rec"], variants=["user_text"], max_epochs=1, user_vectors=users),
            EvalConfig(),
            cyclic_data.folder,
            tmp_path / "rec",
            user_vectors=users,
        )


def test_negatives_are_drawn_once_and_reused(cyclic_data, tmp_path):
    data = load_sequence_data(cyclic_data.folder)
    path = tmp_path / "negatives.parquet"
    first = load_negatives(data, EvalConfig(sampled_negatives=10), path)
    again = load_negatives(data, EvalConfig(sampled_negatives=10, negative_seed=999), path)
    assert all(np.array_equal(first[s], again[s]) for s in ("valid", "test"))  # the saved file wins
    for row, seq in enumerate(data.sequences):
        assert not set(first["test"][row]) & set(seq.tolist())
    with pytest.raises(DataError, match="negatives"):
        load_negatives(data, EvalConfig(sampled_negatives=20), path)


def test_ranks_do_not_depend_on_how_many_users_are_scored_at_once(cyclic_data):
    """Full ranking is scored a batch of users at a time, the batch sized by
    evaluation.score_memory_mb: every batching gives the same ranks, under both protocols."""
    data = load_sequence_data(cyclic_data.folder)
    test = eval_inputs(data, "test", max_len=4)
    scores = torch.randn(data.n_users, data.n_items + 1, generator=torch.Generator().manual_seed(0))
    negatives = load_negatives(data, EvalConfig(sampled_negatives=5), cyclic_data.folder / "n.pq")

    def ranks(batch: int) -> dict[str, torch.Tensor]:
        return rank_targets(
            lambda part: scores[part],
            test,
            exclude_history=True,
            negatives=negatives["test"],
            batch_size=batch,
        )

    whole = ranks(data.n_users)
    for batch in (1, 7):
        assert all(torch.equal(whole[protocol], ranks(batch)[protocol]) for protocol in whole)
    assert EvalConfig().users_per_batch(1_000_000) == 8  # 128 MiB at 16 bytes a score
    assert EvalConfig(score_memory_mb=1).users_per_batch(10**7) == 1
    # a memory bound changes no result: it is not part of any stage key
    assert EvalConfig(score_memory_mb=64).result_settings() == EvalConfig().result_settings()


def test_empty_and_unknown_inputs(tmp_path):
    with pytest.raises(DataError, match="run the data stage first"):
        load_sequence_data(tmp_path)
    with pytest.raises(ValidationError, match=r"recommender|models(.|\n)*'sasrec', 'gru4rec'"):
        RecommenderConfig(models=["bert4rec"])
    with pytest.raises(ValidationError, match="device"):
        RecommenderConfig(device="gpu0")
    assert torch.get_num_threads() >= 1


def test_sasrec_inference_on_padded_input_matches_training_path():
    from slim_core.rec.models import SASRec

    torch.manual_seed(0)
    model = SASRec(30, 16, max_len=12, layers=2, heads=2, inner_dim=32, dropout=0.0)
    seq = torch.tensor([[0] * 10 + [3, 4], list(range(1, 13))])
    model.train()
    slow = model.full_sort_predict(seq)
    model.eval()
    with torch.no_grad():  # PyTorch's inference fast path
        fast = model.full_sort_predict(seq)
    assert not torch.isnan(fast[:, 1:]).any()
    assert torch.allclose(slow[:, 1:], fast[:, 1:], atol=1e-5)


def test_result_rows_come_in_one_order_whatever_order_the_runs_finished_in():
    """Backbone, then variant from IDs only to rationales, then source (student, teacher, the
    control); never the order of a set, which changed between two runs of the same demo."""
    variants = {
        "gru4rec": ["item_user_text+zeros", "id", "item_user_text+teacher", "item_text",
                    "item_user_text+student"],
        "text_matching": ["teacher", "student:step1", "student"],
    }  # fmt: skip
    rows = [
        {"model": model, "variant": variant, "seed": 1, "split": "test", "protocol": protocol,
         "ndcg@10": 0.1, "hit@10": 0.2, "hit@20": 0.3, "mrr": 0.1}
        for model, names in variants.items() for variant in names
        for protocol in ("full", "sampled")
    ]  # fmt: skip
    table = markdown_table(rows)
    assert markdown_table(rows[::-1]) == table
    lines = [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| ")]
    order = [f"{model[2:]} {variant}" for model, variant in lines if model[2:] in variants]
    assert order == [
        "gru4rec id",
        "gru4rec item_text",
        "gru4rec item_user_text+student",
        "gru4rec item_user_text+teacher",
        "gru4rec item_user_text+zeros",
        "text_matching student",
        "text_matching student:step1",
        "text_matching teacher",
    ]


def test_prefixes_make_every_training_target_its_own_row(cyclic_data):
    data = load_sequence_data(cyclic_data.folder)
    rows = training_prefixes(data, max_len=4)
    pairs = sum(len(data.train_part(u)) - 1 for u in range(data.n_users))
    assert (
        len(rows) == pairs and (rows.targets[:, :-1] == 0).all() and (rows.targets[:, -1] > 0).all()
    )
    for n in range(len(rows)):
        sequence, cutoff = data.sequences[rows.users[n]], rows.cutoffs[n, -1]
        assert rows.targets[n, -1] == sequence[cutoff]
        history = rows.inputs[n][rows.inputs[n] > 0]
        # the newest max_len items before the target, and never the target's own position
        assert history.tolist() == sequence[max(0, cutoff - 4) : cutoff].tolist()


@pytest.mark.parametrize("name", ["SASRec", "SRGNN"])
def test_scores_do_not_depend_on_left_padding(name):
    """Training and evaluation cut each batch to its longest history: a user's scores must be
    the same whatever the width."""
    from slim_core.rec import models

    torch.manual_seed(0)
    extra = {"max_len": 12} if name == "SASRec" else {}
    model = getattr(models, name)(20, 16, **extra).eval()
    assert model.cuts_padding
    seq = torch.tensor([[0, 0, 0, 5, 3, 5, 7], [0, 0, 0, 0, 0, 2, 9], [1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        narrow = model.full_sort_predict(seq)
        wide = model.full_sort_predict(torch.cat([torch.zeros(3, 5, dtype=torch.long), seq], 1))
        alone = model.full_sort_predict(seq[1:2, -2:])
    assert torch.allclose(narrow[:, 1:], wide[:, 1:], atol=1e-6)
    assert torch.allclose(narrow[1:2, 1:], alone[:, 1:], atol=1e-6)


def test_gru4rec_keeps_full_windows_so_no_score_depends_on_the_batch(cyclic_data):
    """GRU4Rec reads the padding (its run-in tells the GRU the history's length), so its batches
    are never cut: a user scores the same alone as beside a longer history."""
    from slim_core.rec.models import GRU4Rec
    from slim_core.rec.stage import sequential_scorer

    torch.manual_seed(0)
    model = GRU4Rec(40, 16).eval()
    assert not model.cuts_padding
    data = load_sequence_data(cyclic_data.folder)
    split = eval_inputs(data, "test", max_len=10)
    score = sequential_scorer(model, split, None)
    with torch.no_grad():
        together = score(slice(0, 3))
        alone = score(slice(1, 2))
    assert torch.allclose(together[1:2, 1:], alone[:, 1:], atol=1e-6)
    windows = training_windows(data, max_len=10)
    batches = window_batches(windows, 4, cut_padding=False)
    assert all(seq.shape[1] == 10 for seq, _ in batches(np.random.default_rng(0)))


def test_gru4rec_item_text_starts_as_its_id_model_plus_the_text():
    """GRU4Rec's item fusion passes the ID embedding through at the start; the text's share is
    drawn at random and learned (an initial draw over both halves cost it on Scientific)."""
    from slim_core.rec.models import GRU4Rec

    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(41, 12), dim=1)
    model = GRU4Rec(40, 16, item_text=text)
    fusion, ids = model.items.fusion, model.items.id_embedding.weight
    with torch.no_grad():
        text_share = fusion(text, torch.zeros_like(ids))
        torch.testing.assert_close(fusion(text, ids) - text_share, ids)
    assert text_share.abs().mean() > 0.01  # the text is in from the start, not zeroed out


def test_sasrec_user_vector_starts_as_its_state_plus_the_vector():
    """SASRec's user-side fusion passes the backbone's state through at the start (drawn at
    random, it cost every user-vector row its item-text level on the Scientific sample)."""
    from slim_core.rec.models import SASRec

    torch.manual_seed(0)
    model = SASRec(40, 16, user_text_dim=12).eval()
    fusion = model.user_fusion
    states = torch.randn(3, 5, 16)
    user_text = torch.nn.functional.normalize(torch.randn(3, 5, 12), dim=-1)
    with torch.no_grad():
        vector_share = fusion(user_text, torch.zeros_like(states))
        torch.testing.assert_close(fusion(user_text, states) - vector_share, states)
    assert vector_share.abs().mean() > 0.01  # the vector is in from the start


def test_trimmed_batches_keep_every_item_and_target():
    from slim_core.rec.train import trimmed_start

    # train parts [1, 2, 7], [3, 4, 5, 8], [6, 9] (then a valid and a test item each): rows
    # [0, 0, 0, 1, 2] -> [0, 0, 0, 2, 7], [0, 0, 3, 4, 5] -> [0, 0, 4, 5, 8], [0, 0, 0, 0, 6] -> 9
    sequences = [np.array(s + [10, 11]) for s in ([1, 2, 7], [3, 4, 5, 8], [6, 9])]
    data = SequenceData(n_items=11, user_idx=np.arange(3), sequences=sequences)
    windows = training_windows(data, max_len=5)
    assert windows.inputs.tolist() == [[0, 0, 0, 1, 2], [0, 0, 3, 4, 5], [0, 0, 0, 0, 6]]
    assert windows.targets.tolist() == [[0, 0, 0, 2, 7], [0, 0, 4, 5, 8], [0, 0, 0, 0, 9]]
    ((seq, tgt),) = list(window_batches(windows, 8)(np.random.default_rng(0)))
    assert seq.shape == (3, 3) and int((seq > 0).sum()) == 6 and int((tgt > 0).sum()) == 6
    assert trimmed_start(torch.zeros(2, 4, dtype=torch.long)) == 3  # all padding: keep a column


def test_sasrec_starts_from_recbole_initialisation():
    """PyTorch's default normal(0, 1) position table drowned the normal(0, 0.02) item table, and
    SASRec learned popularity only on Scientific (docs/benchmarks.md, SASRec ablation)."""
    from slim_core.rec.models import SASRec

    torch.manual_seed(0)
    model = SASRec(500, 64, max_len=50)
    for name, weight in model.named_parameters():
        if weight.dim() == 2:
            assert abs(weight.std().item() - 0.02) < 0.004, name
        elif name.endswith("bias"):
            assert not weight.any(), name
    assert not model.items.id_embedding.weight[0].any()  # padding stays zero


def test_srgnn_draws_its_item_text_fusion_from_its_uniform_initialisation():
    """With PyTorch's default initialisation there, SRGNN + item text overfitted early and
    scored under ID on ml-100k (docs/benchmarks.md); the user-side fusion keeps SLIM's own."""
    from slim_core.rec.models import SRGNN

    torch.manual_seed(0)
    dim, text_dim = 16, 256  # bounds: 1/sqrt(16) = 0.25 here, PyTorch's 1/sqrt(fan_in) smaller
    model = SRGNN(50, dim, item_text=torch.randn(51, text_dim), user_text_dim=text_dim)
    for name, weight in model.items.fusion.named_parameters():
        assert weight.abs().max().item() <= 0.25, name
        assert weight.dim() == 1 or weight.abs().max().item() > 0.24, name
    assert model.user_fusion.g_l.weight.abs().max().item() <= 1 / text_dim**0.5
    assert abs(model.items.id_embedding.weight[1:].std().item() - 0.02) < 0.004


def test_srgnn_graph_matches_the_papers_session_graph():
    """RecBole's docstring example, session 1 2 3 2 4: in- and out-edges normalised by degree."""
    from slim_core.rec.models import SRGNN

    torch.manual_seed(0)
    model = SRGNN(10, 8).eval()
    seen = {}
    original = torch.Tensor.__matmul__

    def record(left, right):  # the two degree-normalised adjacency tables meet the nodes here
        if left.dim() == 3 and left.shape[-1] == left.shape[-2]:
            seen.setdefault("incoming" if "incoming" not in seen else "outgoing", left.clone())
        return original(left, right)

    torch.Tensor.__matmul__ = record
    try:
        with torch.no_grad():
            model.full_sort_predict(torch.tensor([[0, 0, 1, 2, 3, 2, 4]]))
    finally:
        torch.Tensor.__matmul__ = original
    # Nodes are the first positions of items 1, 2, 3, 4: columns 2, 3, 4, 6.
    nodes = [2, 3, 4, 6]
    incoming = seen["incoming"][0][nodes][:, nodes]
    outgoing = seen["outgoing"][0][nodes][:, nodes]
    assert incoming.tolist() == [
        [0, 0, 0, 0],
        [0.5, 0, 0.5, 0],  # item 2 is reached from 1 and from 3
        [0, 1, 0, 0],
        [0, 1, 0, 0],
    ]
    assert outgoing.tolist() == [
        [0, 1, 0, 0],
        [0, 0, 0.5, 0.5],  # item 2 leads to 3 and to 4
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ]


def test_results_table_shows_a_spread_only_over_several_seeds():
    from slim_core.rec.report import markdown_table

    def run(seed: int, ndcg: float) -> list[dict]:
        return [
            {"model": "sasrec", "variant": "id", "seed": seed, "split": "test", "protocol": p}
            | {"ndcg@10": ndcg, "hit@10": ndcg, "hit@20": ndcg, "mrr": ndcg}
            for p in ("full", "sampled")
        ]

    one = markdown_table(run(1, 0.1))
    assert "| sasrec | id | 1 | 10.00 | 10.00 |" in one and "±" not in one
    two = markdown_table(run(1, 0.1) + run(2, 0.2))
    assert "| sasrec | id | 2 | 15.00 ± 7.07 |" in two
