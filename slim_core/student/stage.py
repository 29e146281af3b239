"""The student stage: fine-tune on teacher rationales, measure, then write one for every user.

    sft = finetune_student(config, data, teacher_rationales)   # cached by pairs + settings + base
    result = student_rationales(config, data, sft)             # sharded, resumable

Folders: `<output_dir>/student/sft/<key>/` (adapter, merged model, loss curve, quality) and
`<output_dir>/student/` (generation shards, student_rationales.parquet, summary.json).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slim_core.config import LEGACY_LORA_KEYS, LEGACY_SFT_KEYS, SlimConfig, StudentConfig
from slim_core.data import DataStageResult
from slim_core.encoding import TextEncoder
from slim_core.errors import ConfigError, DataError
from slim_core.llm.base import LLMBackend
from slim_core.llm.transformers_local import TransformersBackend, resolve_dtype
from slim_core.stages import Artifact, Stage, StageHooks, run_stage
from slim_core.student.inference import (
    StudentInferenceResult,
    decoding,
    generate_rationales,
    student_prompts,
    write_student_rationales,
)
from slim_core.student.pairs import distillation_pairs
from slim_core.student.quality import QUALITY_METRICS_VERSION, student_quality
from slim_core.student.sft import finetune
from slim_core.tracking import tracking_environment
from storage import RunFolder, StageFolder, canonical_hash, file_digest, write_json_atomic

log = logging.getLogger("slim_core.student")

# What decides the fine-tuned weights, keyed by the names earlier versions used, so that a
# configuration moved to `sft:` / `lora:` keeps its fine-tuned student.
KEYED_FIELDS = ("heldout_fraction", "max_history_items", "token_budget")
# SFTConfig settings that do not change the weights: changing them does not retrain.
UNKEYED_SFT = frozenset({"save_steps", "save_total_limit", "gradient_checkpointing"})


def finetune_settings(cfg: StudentConfig) -> dict[str, Any]:
    """The settings in the fine-tuned student's key."""
    sft, lora = cfg.sft_settings, cfg.lora_settings
    settings: dict[str, Any] = {
        "lora_r": lora["r"],
        "lora_alpha": lora["lora_alpha"],
        "lora_dropout": float(lora["lora_dropout"]),  # as the flat keys were validated
        "lora_targets": lora["target_modules"],
        "learning_rate": float(sft["learning_rate"]),
        "epochs": float(sft["num_train_epochs"]),
        "max_steps": sft.get("max_steps"),
        "batch_size": sft["per_device_train_batch_size"],
        "max_length": sft["max_length"],
    }
    settings |= {name: getattr(cfg, name) for name in KEYED_FIELDS}
    keyed_sft = set(LEGACY_SFT_KEYS.values()) | UNKEYED_SFT  # above, or not in the key
    extra_sft = {k: v for k, v in cfg.sft.items() if k not in keyed_sft}
    extra_lora = {k: v for k, v in cfg.lora.items() if k not in LEGACY_LORA_KEYS.values()}
    if extra_sft:  # only when set: keys of configurations without them stay as they were
        settings["sft"] = extra_sft
    if extra_lora:
        settings["lora"] = extra_lora
    return settings


def student_config(config: SlimConfig) -> StudentConfig:
    if config.student is None:
        raise ConfigError("no `student:` section in the configuration")
    return config.student


def student_folder(config: SlimConfig) -> Path:
    return Path(config.run.output_dir).resolve() / "student"


def base_model(cfg: StudentConfig) -> tuple[Path, str | None]:
    """(folder, gguf file) of the base model: a shipped model is fetched and dequantised."""
    from slim_core.model_files import (
        HUB_FORM,
        SHIPPED_MODELS,
        dequantised_folder,
        hub_snapshot,
        is_hub_id,
    )

    if cfg.base_model in SHIPPED_MODELS:
        return dequantised_folder(cfg.base_model), None
    is_hub = is_hub_id(cfg.base_model)
    folder = (
        hub_snapshot(cfg.base_model, "student.base_model", gguf_file=cfg.gguf_file)
        if is_hub
        else Path(cfg.base_model)
    )
    if not folder.is_dir():
        known = ", ".join(sorted(SHIPPED_MODELS))
        raise ConfigError(
            f"student.base_model: {cfg.base_model!r} is neither a local model folder, a "
            f"shipped model ({known}) nor a pinned hub id ({HUB_FORM})"
        )
    if cfg.gguf_file and not (folder / cfg.gguf_file).is_file():
        raise ConfigError(f"student.gguf_file: {folder / cfg.gguf_file} not found")
    return folder, cfg.gguf_file


def base_model_hash(cfg: StudentConfig, folder: Path, gguf_file: str | None) -> str:
    """Content fingerprint of the base model's weight and tokenizer files.

    A shipped model is identified by its pinned sha256 (checked when fetched) and the
    transformers version that dequantised it: hashing the dequantised copy (hundreds of MB)
    again on every run would only repeat that check.
    """
    from importlib.metadata import version

    from slim_core.model_files import SHIPPED_MODELS

    if cfg.base_model in SHIPPED_MODELS:
        return f"{SHIPPED_MODELS[cfg.base_model].sha256[:16]}-{version('transformers')}"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if gguf_file:
        files = [folder / gguf_file] + [p for p in files if p.suffix == ".json"]
    return canonical_hash([file_digest(p) for p in files], 16)


@dataclass(frozen=True)
class StudentModel:
    folder: Path
    merged: Path
    adapter: Path
    base: Path
    quality: dict[str, Any]


@dataclass(frozen=True)
class StudentFineTuning(Stage[StudentModel]):
    """LoRA fine-tuning plus before/after quality on the held-out pairs. Inputs: the teacher's
    distillation pairs (selected, if asked), the fine-tuning settings, the base model and the
    seed; the scoring settings are not in the key (changing them rescores, it does not retrain).
    """

    config: SlimConfig
    data: DataStageResult
    teacher_rationales: Path
    name = "student/sft"
    task_name = "student-finetune"
    tag = "slim-student"

    @functools.cached_property
    def _plan(self) -> tuple[list, Path, str | None]:
        cfg = student_config(self.config)
        pairs = distillation_pairs(cfg, self.data, self.teacher_rationales, self.config.data.domain)
        if cfg.select != "none":
            pairs = _selected(self.config, self.data, pairs)
        return pairs, *base_model(cfg)

    @functools.cached_property
    def key(self) -> str:
        cfg = student_config(self.config)
        pairs, base, gguf_file = self._plan
        return canonical_hash(
            {
                "pairs": [(p.user_idx, p.cutoff, p.prompt, p.completion) for p in pairs],
                "settings": finetune_settings(cfg),
                "base": base_model_hash(cfg, base, gguf_file),
                "seed": self.config.run.seed,
            },
            16,
        )

    @property
    def scoring(self) -> dict[str, Any]:
        cfg = student_config(self.config)
        metrics = QUALITY_METRICS_VERSION
        return {"dtype": resolve_dtype(cfg.dtype), **decoding(cfg).as_dict(), "metrics": metrics}

    def is_done(self, folder: StageFolder) -> bool:
        return _read_quality(folder.path).get("scored_with") == self.scoring

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        config, cfg = self.config, student_config(self.config)
        pairs, base, gguf_file = self._plan
        if not folder.file("training.json").is_file():  # written last by a finished fine-tuning
            with tracking_environment(config):  # TRL reports to the run's MLflow store
                finetune(
                    pairs,
                    cfg,
                    base,
                    folder.path,
                    gguf_file=gguf_file,
                    seed=config.run.seed,
                    report_to="mlflow" if config.tracking.mlflow else "none",
                )
        quality = _score(config, self.data, pairs, base, gguf_file, folder.path)
        write_json_atomic(folder.file("quality.json"), quality | {"scored_with": self.scoring})

    def load(self, folder: StageFolder) -> StudentModel:
        quality = _read_quality(folder.path)
        merged, adapter = folder.file("merged"), folder.file("adapter")
        return StudentModel(folder.path, merged, adapter, self._plan[1], quality)

    def record(self, run: RunFolder, folder: StageFolder) -> None:
        # its pointer of its own: student/current.json, the student that regeneration reuses
        pointer = student_folder(self.config) / "current.json"
        write_json_atomic(pointer, {"folder": str(folder.path), "base": str(self._plan[1])})

    def artifacts(self, folder: StageFolder) -> list[Artifact]:
        quality = quality_markdown(_read_quality(folder.path))
        return [
            Artifact(
                "student-quality",
                "Three-step share, ROUGE-L and embedding cosine against the teacher",
                markdown=f"# Student quality\n\n{quality}\n\nFolder: `{folder.path}`\n",
            )
        ]


def _read_quality(folder: Path) -> dict[str, Any]:
    file = folder / "quality.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def finetune_student(
    config: SlimConfig, data: DataStageResult, teacher_rationales: Path
) -> StudentModel:
    """LoRA fine-tuning plus before/after quality on the held-out pairs (cached on disk)."""
    stage = StudentFineTuning(config, data, Path(teacher_rationales))
    return run_stage(stage, RunFolder(config.run.output_dir))


def _score(
    config: SlimConfig,
    data: DataStageResult,
    pairs: list,
    base: Path,
    gguf_file: str | None,
    folder: Path,
) -> dict[str, Any]:
    """Quality of the base and the fine-tuned model on the held-out pairs."""
    cfg, params = student_config(config), decoding(student_config(config))
    heldout = [p for p in pairs if p.heldout]
    encoder = TextEncoder.from_config(config.encoder)
    before, base_answers = student_quality(
        TransformersBackend(
            str(base), gguf_file, batch_size=cfg.inference_batch_size, dtype=cfg.dtype
        ),
        heldout,
        params,
        encoder,
    )
    after, answers = student_quality(
        TransformersBackend(
            str(folder / "merged"), batch_size=cfg.inference_batch_size, dtype=cfg.dtype
        ),
        heldout,
        params,
        encoder,
    )
    log.info(
        "student quality on %d held-out pairs: before %s, after %s", len(heldout), before, after
    )
    quality = {
        "before": before,
        "after": after,
        "zero_shot": _heldout_zero_shot(config, data, heldout, base_answers, answers, encoder),
        "examples": [
            {"prompt": p.prompt, "teacher": p.completion, "student": a}
            for p, a in list(zip(heldout, answers, strict=True))[:5]
        ],
    }
    return quality


def _sequences_and_item_vectors(config: SlimConfig, data: DataStageResult):
    """The user sequences and the item text vectors (from the encode stage, which the
    recommenders then reuse) that selection and the held-out zero-shot scores both read."""
    from slim_core.rec.data import load_sequence_data
    from slim_core.rec.pipeline import encode_stage
    from slim_core.vectors import read_item_vectors

    sequences = load_sequence_data(data.folder)
    vectors = encode_stage(config, data).item_vectors
    items, _ = read_item_vectors(vectors, sequences.n_items, require_all=False)
    return sequences, items


def _heldout_zero_shot(
    config: SlimConfig,
    data: DataStageResult,
    heldout: list,
    base_answers: list[str],
    answers: list[str],
    encoder: TextEncoder,
) -> dict[str, float] | None:
    """Zero-shot NDCG@10 (%) of the held-out pairs' answers, base and fine-tuned, beside the
    teacher's and the history-mean control on the same pairs (slim_core/rationale_score.py):
    does distillation keep what the teacher's text says about the next item?"""
    if not heldout:
        return None
    import numpy as np
    import torch

    from slim_core.rationale_score import history_means, zero_shot_ranks
    from slim_core.rec.metrics import metrics_from_ranks

    sequences, items = _sequences_and_item_vectors(config, data)
    keys = [(p.user_idx, p.cutoff) for p in heldout]

    def ndcg(vectors: np.ndarray) -> float:
        ranks = zero_shot_ranks(vectors, keys, sequences, items)
        return round(100 * metrics_from_ranks(torch.as_tensor(ranks), ks=[10])["ndcg@10"], 2)

    history = history_means(sequences, keys, items, student_config(config).max_history_items)
    return {
        "pairs": len(keys),
        "teacher": ndcg(encoder.encode([p.completion for p in heldout])),
        "base": ndcg(encoder.encode([a or " " for a in base_answers])),
        "student": ndcg(encoder.encode([a or " " for a in answers])),
        "history": ndcg(history),
    }


def _selected(config: SlimConfig, data: DataStageResult, pairs: list) -> list:
    """The pairs `student.select` keeps (slim_core/student/select.py); item text vectors come
    from the encode stage, which the recommenders then reuse."""
    from slim_core.student.select import select_best_of_k, select_top_fraction
    from slim_core.teacher.stage import teacher_samples_file

    sequences, items = _sequences_and_item_vectors(config, data)
    encoder = TextEncoder.from_config(config.encoder)
    cfg = student_config(config)
    if cfg.select == "best_of_k":
        samples = teacher_samples_file(config)
        try:  # every extra answer is a candidate, however few there are
            others = distillation_pairs(
                cfg.model_copy(update={"min_pairs": 1}), data, samples, config.data.domain
            )
        except DataError as error:
            log.warning("student.select best_of_k: no other samples to choose from (%s)", error)
            others = []
        selection = select_best_of_k(pairs, others, sequences, items, encoder)
    else:
        selection = select_top_fraction(pairs, sequences, items, encoder, cfg.select_fraction)
    log.info(
        "student.select %s: kept %d of %d teacher answers at training cutoffs "
        "(median zero-shot rank of the next item: kept %s, dropped %s); %d pairs in all",
        cfg.select,
        selection.kept,
        selection.candidates,
        selection.median_rank_kept,
        selection.median_rank_dropped,
        len(selection.pairs),
    )
    return selection.pairs


def current_student(config: SlimConfig) -> StudentModel:
    """The student fine-tuned last for this output folder (what regeneration reuses)."""
    pointer = student_folder(config) / "current.json"
    if not pointer.is_file():
        raise ConfigError(
            f"no fine-tuned student in {student_folder(config)}: run `slim student run` first"
        )
    saved = json.loads(pointer.read_text(encoding="utf-8"))
    folder = Path(saved["folder"])
    if not (folder / "merged").is_dir() or not (folder / "quality.json").is_file():
        raise ConfigError(
            f"{folder}: the fine-tuned student is incomplete; rerun `slim student run`"
        )
    quality = json.loads((folder / "quality.json").read_text(encoding="utf-8"))
    return StudentModel(folder, folder / "merged", folder / "adapter", Path(saved["base"]), quality)


def quality_markdown(quality: dict[str, Any]) -> str:
    before, after = quality["before"], quality["after"]
    lines = ["| held-out pairs | base model | fine-tuned |", "|---|---:|---:|"]
    lines.append(
        f"| answers with all three steps | {before['three_steps']:.0%} | {after['three_steps']:.0%} |"
    )
    lines.append(f"| ROUGE-L F1 vs teacher | {before['rouge_l']:.3f} | {after['rouge_l']:.3f} |")
    lines.append(
        f"| embedding cosine vs teacher | {before['cosine']:.3f} | {after['cosine']:.3f} |"
    )
    if "looping" in after:  # quality files scored before the metric existed lack it
        lines.append(
            f"| answers that loop (a 1-3 word run 4 times in a row) | {before['looping']:.0%} "
            f"| {after['looping']:.0%} |"
        )
    zero_shot = quality.get("zero_shot")
    note = ""
    if zero_shot:  # quality files scored before the metric existed lack it
        lines.append(
            f"| zero-shot NDCG@10 of the next item (%) | {zero_shot['base']:.2f} "
            f"| {zero_shot['student']:.2f} |"
        )
        note = (
            f" Zero-shot on the same pairs: the teacher's answers {zero_shot['teacher']:.2f}, "
            f"the mean text of the history shown {zero_shot['history']:.2f} (no LLM)."
        )
    pairs = int(after["pairs"])
    return "\n".join(lines) + f"\n\n{pairs} held-out (user, cutoff) pairs.{note}\n"


def make_student_backend(cfg: StudentConfig, model: StudentModel) -> LLMBackend:
    if cfg.backend == "vllm":
        from slim_core.llm.vllm_offline import VLLMBackend

        return VLLMBackend(
            str(model.base),
            adapter=str(model.adapter),
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
        )
    return TransformersBackend(
        str(model.merged),
        batch_size=cfg.inference_batch_size,
        label=f"student-{model.folder.name}",
        dtype=cfg.dtype,
    )


def student_rationales(
    config: SlimConfig,
    data: DataStageResult,
    model: StudentModel,
    backend: LLMBackend | None = None,
) -> StudentInferenceResult:
    cfg = student_config(config)
    backend = backend or make_student_backend(cfg, model)
    split_prompts = student_prompts(cfg, data, config.data.domain)
    folder = student_folder(config)
    report = generate_rationales([p for _, p in split_prompts], backend, folder, cfg)
    return write_student_rationales(split_prompts, backend.model_id, folder, cfg, report)
