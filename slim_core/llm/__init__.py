"""LLM backends behind one small interface: an OpenAI-compatible HTTP endpoint, vLLM, transformers."""

from slim_core.llm.base import Decoding, Generation, GenerationFailure, LLMBackend

__all__ = ["Decoding", "Generation", "GenerationFailure", "LLMBackend"]
