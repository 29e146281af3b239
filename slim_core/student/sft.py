"""Fine-tune the student on teacher rationales: TRL's SFTTrainer with a PEFT LoRA adapter.

    result = finetune(pairs, cfg, base_folder, out_folder)

Loss is on the rationale tokens only (prompt-completion data). Checkpoints are written every
`save_steps` into `<out>/checkpoints/`; a rerun after a kill resumes from the newest one. The
result folder holds the adapter, a merged model with its tokenizer (what inference loads) and
a loss curve.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slim_core.config import StudentConfig
from slim_core.errors import ConfigError
from slim_core.llm.transformers_local import native_bfloat16
from slim_core.student.pairs import Pair
from storage import write_json_atomic

log = logging.getLogger("slim_core.student")


@dataclass(frozen=True)
class SFTResult:
    folder: Path
    adapter: Path
    merged: Path
    losses: list[tuple[int, float]]  # (step, training loss)
    resumed_from: int | None  # the checkpoint step a resumed run started from


def load_base(path: str | Path, gguf_file: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32; GGUF weights arrive dequantised and trainable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # TRL refuses a model that still carries the GGUF config
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def sft_records(pairs: list[Pair], chat: bool) -> list[dict[str, Any]]:
    """TRL prompt-completion records: conversational when the model has a chat template, so
    training sees exactly the text inference will send."""
    if chat:
        return [
            {
                "prompt": [{"role": "user", "content": p.prompt}],
                "completion": [{"role": "assistant", "content": p.completion}],
            }
            for p in pairs
        ]
    return [{"prompt": p.prompt, "completion": "\n" + p.completion} for p in pairs]


# Causal LMs whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no soft-capping
# or scaling between the two, so the loss can read the head at the rationale positions only.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"})


def rationale_token_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> Any | None:
    """Cross-entropy over the rationale tokens, reading the LM head at those positions only.

    The model's own loss runs the head and a log-softmax over every position of the batch,
    prompt and padding included: ~75% of it wasted on demo prompts, 13% of a CPU step in the
    log-softmax alone (docs/benchmarks.md). Same value as `ForCausalLMLoss` (sum over labelled
    tokens / `num_items_in_batch`, else the mean). None where the model is not a plain head on
    a decoder (`PLAIN_HEAD_MODEL_TYPES`): the caller then takes the model's own loss.
    """
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    labels = inputs["labels"]
    decoder_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = base.get_decoder()(**decoder_inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets[keep])
    return F.cross_entropy(logits, targets[keep], reduction="sum") / num_items_in_batch


def sft_trainer_class(fused_loss: bool) -> type:
    """TRL's SFTTrainer, or on CPUs one that computes the loss on the rationale tokens only.

    TRL scores the rationale tokens through a fused, tiled LM head: on GPUs its Triton kernel
    saves the memory of full logits; without Triton it runs a torch fallback that took 15 of
    the 36 s of a demo step on 2 cores. The plain head read at the rationale positions gives
    the same loss (the mean over rationale tokens) at a fraction of that
    (`rationale_token_loss`); other models get the model's own loss over full logits.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if fused_loss:
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not return_outputs and self.accelerator.num_processes == 1:
                # Trainer's convention: the loss is normalised by num_items_in_batch only when
                # the model takes it (its loss kwargs); otherwise a per-batch mean.
                items = num_items_in_batch if self.model_accepts_loss_kwargs else None
                loss = rationale_token_loss(model, inputs, items)
                if loss is not None:
                    return loss
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer


def latest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def trainer_configs(
    cfg: StudentConfig, checkpoints: Path, *, seed: int = 42, report_to: str = "none"
) -> tuple[Any, Any]:
    """TRL's SFTConfig and PEFT's LoraConfig built from `student.sft` / `student.lora` (over
    SLIM's defaults) and what SLIM decides itself; a setting either refuses is a ConfigError
    naming it. Cheap enough to call before any paid stage, so a typo fails at once."""
    import torch
    from peft import LoraConfig
    from trl import SFTConfig

    runtime = {
        "save_strategy": "steps",
        "save_total_limit": 2,
        "logging_steps": 1,
        "use_cpu": not torch.cuda.is_available(),
        # TRL turns bfloat16 mixed precision on by default; a CPU without AVX512-BF16 / AMX
        # emulates it, about 10x slower than float32.
        "bf16": native_bfloat16("cuda" if torch.cuda.is_available() else "cpu"),
        "dataloader_num_workers": 0,
    }
    owned = {
        "output_dir": str(checkpoints),
        "completion_only_loss": True,
        "report_to": report_to,  # "mlflow" with tracking.mlflow (slim_core.tracking)
        "seed": seed,
    }
    try:
        args = SFTConfig(**{**runtime, **cfg.sft_settings, **owned})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"student.sft: TRL's SFTConfig refused it: {error}") from None
    try:
        peft = LoraConfig(**cfg.lora_settings, task_type="CAUSAL_LM")
    except (TypeError, ValueError) as error:
        raise ConfigError(f"student.lora: PEFT's LoraConfig refused it: {error}") from None
    return args, peft


def check_trainer_settings(cfg: StudentConfig) -> None:
    """Build TRL's and PEFT's configs once, before any stage is paid for: a setting either
    refuses stops the run at its start, not after the teacher."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        trainer_configs(cfg, Path(folder))


def finetune(
    pairs: list[Pair],
    cfg: StudentConfig,
    base: str | Path,
    out: Path,
    *,
    gguf_file: str | None = None,
    seed: int = 42,
    callbacks: list[Any] | None = None,
    report_to: str = "none",
) -> SFTResult:
    import torch
    from datasets import Dataset

    train = [p for p in pairs if not p.heldout]
    if not train:
        raise ConfigError("student: every teacher pair is held out; lower heldout_fraction")
    checkpoints = out / "checkpoints"
    args, peft = trainer_configs(cfg, checkpoints, seed=seed, report_to=report_to)
    model, tokenizer = load_base(base, gguf_file)
    targets = peft.target_modules if isinstance(peft.target_modules, (set, list)) else []
    modules = [n for n, _ in model.named_modules()]
    missing = sorted(t for t in targets if not any(n.endswith(t) for n in modules))
    if missing:
        raise ConfigError(
            f"student.lora.target_modules: the base model has no module named {missing} "
            f"(e.g. {sorted({n.rsplit('.', 1)[-1] for n in modules})[:12]})"
        )
    chat = bool(getattr(tokenizer, "chat_template", None))
    trainer = sft_trainer_class(fused_loss=torch.cuda.is_available())(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_records(train, chat)),
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=callbacks,
    )
    resume = latest_checkpoint(checkpoints)
    resumed_from = None if resume is None else int(resume.name.split("-")[-1])
    if resume is not None:
        log.info("student: resuming fine-tuning from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    merged = out / "merged"
    trainer.model.merge_and_unload().save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    losses = [
        (int(entry["step"]), float(entry["loss"]))
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    write_json_atomic(
        out / "training.json",
        {
            "pairs": len(pairs),
            "train_pairs": len(train),
            "heldout_pairs": len(pairs) - len(train),
            "steps": trainer.state.global_step,
            "resumed_from": resumed_from,
            "losses": losses,
            "chat_template": chat,
        },
    )
    loss_curve(losses, out / "loss.png")
    return SFTResult(out, adapter, merged, losses, resumed_from)


def loss_curve(losses: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        steps, values = zip(*losses, strict=True)
        ax.plot(steps, values, marker=".", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (rationale tokens)")
    ax.set_title("Student fine-tuning")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_training(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "training.json").read_text(encoding="utf-8"))


def load_adapter(base: str | Path, adapter: str | Path, gguf_file: str | None = None) -> Any:
    """The base model with the student's adapter applied; a clear error if they do not fit."""
    from peft import PeftModel

    model, _ = load_base(base, gguf_file)
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter}: not a LoRA adapter folder (adapter_config.json missing)")
    try:
        return PeftModel.from_pretrained(model, str(adapter)).eval()
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0][:300]
        raise ConfigError(
            f"adapter {adapter} does not fit base model {base} (trained on another model?): {first}"
        ) from error
