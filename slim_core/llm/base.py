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

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


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


class LLMBackend(Protocol):
    model_id: str

    def generate(
        self, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        """One result per prompt, in order; never raises for a single prompt's failure."""
        ...
