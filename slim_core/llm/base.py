"""The one interface every LLM backend implements: a batch of prompts in, one result per prompt out."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters; part of the answer cache key."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    # > 1 discourages repeating tokens: small greedy models otherwise loop on one line. Local
    # backends and vLLM take it as is; over HTTP it is sent only when set (OpenAI rejects it,
    # vLLM's and llama.cpp's servers accept it).
    repetition_penalty: float = 1.0
    # Most tokens per rationale step (see step_budget.py): the answer is kept to three steps of
    # at most this length. Only the transformers backend implements it.
    step_tokens: int | None = None

    def as_dict(self) -> dict[str, float | int]:
        """The parameters that decide an answer; defaults left out so cache keys stay stable."""
        values = asdict(self)
        if values["repetition_penalty"] == 1.0:
            del values["repetition_penalty"]
        if values["step_tokens"] is None:
            del values["step_tokens"]
        return values


@dataclass(frozen=True)
class Generation:
    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    attempts: int = 1


@dataclass(frozen=True)
class GenerationFailure:
    """A prompt that still failed after its retries (goes to the dead-letter table)."""

    error: str
    attempts: int
    raw: str | None = None
    status: int | None = None  # the HTTP status of the last reply, where there was one
    # The endpoint may have billed it: the request was sent and no error status came back (a
    # timeout while it answered, a 200 reply cut short). Counted against the budget.
    billed: bool = False


class LLMBackend(Protocol):
    model_id: str

    def generate(
        self, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        """One result per prompt, in order; never raises for a single prompt's failure."""
        ...
