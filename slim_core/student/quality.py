"""How close the student writes to the teacher, on held-out (user, cutoff) pairs.

Numbers before and after fine-tuning, on the same prompts: the share of answers with all three
steps (the output contract), ROUGE-L F1 against the teacher's rationale (wording), the cosine of
sentence embeddings (meaning, which is what the recommenders consume), and the share of answers
that loop (a small greedy model can repeat one word to its token budget, which the step budget
cuts off but the other three numbers barely show).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from slim_core.encoding import TextEncoder
from slim_core.llm.base import Decoding, Generation, LLMBackend
from slim_core.prompts import parse_rationale
from slim_core.student.pairs import Pair

WORD = re.compile(r"\w+")
# Bump when the metrics change: stored quality files scored with another version are rescored.
QUALITY_METRICS_VERSION = 3  # 3: zero-shot NDCG@10 of base, student and teacher


def loops(text: str, max_words: int = 3, repeats: int = 4) -> bool:
    """Whether some run of 1..`max_words` words stands `repeats` times back to back
    ("scientific scientific scientific scientific"); longer runs, such as one product title
    bought four times, do not count."""
    words = WORD.findall(text.lower())
    for n in range(1, max_words + 1):
        for start in range(len(words) - n * repeats + 1):
            gram = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return False


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = WORD.findall(candidate.lower()), WORD.findall(reference.lower())
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[-1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def answer_quality(
    answers: Sequence[str], references: Sequence[str], encoder: TextEncoder
) -> dict[str, float]:
    """Three-step share, ROUGE-L, embedding cosine and looping share of answers vs references."""
    if len(answers) != len(references) or not answers:
        raise ValueError("answers and references must be non-empty and of equal length")
    steps = [parse_rationale(a) is not None for a in answers]
    rouge = [rouge_l(a, r) for a, r in zip(answers, references, strict=True)]
    vectors = encoder.encode([a or " " for a in answers])
    targets = encoder.encode(list(references))
    cosine = np.sum(vectors * targets, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(targets, axis=1) + 1e-12
    )
    cosine = np.where([bool(a.strip()) for a in answers], cosine, 0.0)  # no answer: no credit
    return {
        "pairs": float(len(answers)),
        "three_steps": float(np.mean(steps)),
        "rouge_l": float(np.mean(rouge)),
        "cosine": float(np.mean(cosine)),
        "looping": float(np.mean([loops(a) for a in answers])),
    }


def student_quality(
    backend: LLMBackend, pairs: Sequence[Pair], decoding: Decoding, encoder: TextEncoder
) -> tuple[dict[str, float], list[str]]:
    """Generate for the pairs' prompts and score against the teacher; (scores, answers)."""
    results = backend.generate([p.prompt for p in pairs], decoding)
    answers = [r.text if isinstance(r, Generation) else "" for r in results]
    return answer_quality(answers, [p.completion for p in pairs], encoder), answers
