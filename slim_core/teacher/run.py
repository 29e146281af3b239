"""Ask the teacher for rationales batch by batch: cached, re-asked when malformed, within budget.

    report = ask_teacher(prompts, backend, AnswerCache(folder), decoding, batch_size=32)

For each batch: prompts already answered (same model, template, prompt and decoding) are
skipped; the rest go to the backend; answers without the three steps are asked again up to
`malformed_retries` times; then answers and failures are written, one file each per batch.
Before a batch would push the estimated cost over `budget_usd`, the run stops cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tqdm.auto import tqdm

from slim_core.llm.base import Decoding, Generation, GenerationFailure, LLMBackend
from slim_core.prompts import Prompt, parse_rationale
from slim_core.teacher.cache import AnswerCache, answer_key

log = logging.getLogger("slim_core.teacher")


@dataclass(frozen=True)
class Prices:
    """USD per 1,000 tokens (the paper's gpt-3.5-turbo: 0.0015 in, 0.002 out)."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in / 1000 * self.input_per_1k + tokens_out / 1000 * self.output_per_1k


@dataclass
class TeacherReport:
    requested: int = 0
    cached: int = 0
    answered: int = 0
    failed: int = 0
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    stopped_by_budget: bool = False

    def add(self, other: TeacherReport) -> TeacherReport:
        """The sum of two reports (batches of one run)."""
        return TeacherReport(
            self.requested + other.requested,
            self.cached + other.cached,
            self.answered + other.answered,
            self.failed + other.failed,
            self.calls + other.calls,
            self.tokens_in + other.tokens_in,
            self.tokens_out + other.tokens_out,
            self.cost_usd + other.cost_usd,
            self.latencies_s + other.latencies_s,
            self.stopped_by_budget or other.stopped_by_budget,
        )

    def latency_percentiles(self) -> dict[str, float]:
        if not self.latencies_s:
            return {}
        ordered = sorted(self.latencies_s)
        return {
            f"p{q}": ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
            for q in (50, 90, 99)
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def ask_teacher(
    prompts: Sequence[Prompt],
    backend: LLMBackend,
    cache: AnswerCache,
    decoding: Decoding,
    *,
    batch_size: int = 32,
    malformed_retries: int = 2,
    prices: Prices = Prices(),
    budget_usd: float | None = None,
    progress: str | None = None,
    skip_failed: bool = False,
    require_steps: bool = True,
) -> TeacherReport:
    """Ask for every prompt not yet answered; `progress` names a progress bar (None: no bar).

    With `skip_failed`, prompts with a recorded failure count as done too (a deterministic
    model would only fail the same way again; `retry-failed` flows replay them on purpose).
    Without `require_steps`, any non-empty answer is kept even if it lacks the three steps
    (student rationales: the recommenders can still read its text).
    """
    report = TeacherReport(requested=len(prompts))
    done = cache.answered_keys()
    if skip_failed:
        done |= cache.failed_keys()
    todo = []
    for prompt in prompts:
        key = answer_key(backend.model_id, prompt.version, prompt.text, decoding.as_dict())
        if key in done:
            report.cached += 1
        else:
            todo.append((key, prompt))
    bar = tqdm(
        total=len(todo), desc=progress, unit="prompt", disable=True if progress is None else None
    )
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        if budget_usd is not None:
            estimate = prices.cost(
                sum(len(p.text.split()) * 2 for _, p in batch), decoding.max_tokens * len(batch)
            )
            if report.cost_usd + estimate > budget_usd:
                log.warning(
                    "budget: stopping before a batch estimated at $%.4f would pass $%.2f (spent $%.4f)",
                    estimate,
                    budget_usd,
                    report.cost_usd,
                )
                report.stopped_by_budget = True
                break
        answers, failures = _ask_batch(
            batch, backend, decoding, malformed_retries, report, prices, require_steps
        )
        cache.write_answers(answers)
        cache.write_failures(failures)
        bar.update(len(batch))
        log.info(
            "%s batch %d: %d answered, %d failed",
            progress or "teacher",
            start // batch_size + 1,
            len(answers),
            len(failures),
        )
    bar.close()
    return report


def _ask_batch(
    batch,
    backend: LLMBackend,
    decoding: Decoding,
    malformed_retries: int,
    report: TeacherReport,
    prices: Prices,
    require_steps: bool = True,
) -> tuple[list[dict], list[dict]]:
    answers: list[dict] = []
    failures: list[dict] = []
    pending = list(batch)
    attempts: dict[str, int] = {key: 0 for key, _ in batch}
    for round_ in range(malformed_retries + 1):
        results = backend.generate([p.text for _, p in pending], decoding)
        again = []
        for (key, prompt), result in zip(pending, results, strict=True):
            common = {
                "key": key,
                "user_idx": prompt.user_idx,
                "cutoff": prompt.cutoff,
                "model": backend.model_id,
                "template_version": prompt.version,
            }
            attempts[key] += result.attempts
            report.calls += result.attempts
            if isinstance(result, GenerationFailure):
                failures.append(
                    {
                        **common,
                        "error": result.error,
                        "raw_answer": result.raw,
                        "attempts": attempts[key],
                        "failed_at": _now(),
                    }
                )
                continue
            assert isinstance(result, Generation)
            report.tokens_in += result.tokens_in
            report.tokens_out += result.tokens_out
            report.cost_usd += prices.cost(result.tokens_in, result.tokens_out)
            report.latencies_s.append(result.latency_s)
            if not require_steps or parse_rationale(result.text) is not None:
                answers.append(
                    {
                        **common,
                        "answer": result.text,
                        "tokens_in": result.tokens_in,
                        "tokens_out": result.tokens_out,
                        "latency_s": result.latency_s,
                        "attempts": attempts[key],
                        "created_at": _now(),
                    }
                )
            elif round_ < malformed_retries:
                again.append((key, prompt))
            else:
                failures.append(
                    {
                        **common,
                        "error": "answer lacks the three steps",
                        "raw_answer": result.text,
                        "attempts": attempts[key],
                        "failed_at": _now(),
                    }
                )
        pending = again
        if not pending:
            break
    report.answered += len(answers)
    report.failed += len(failures)
    return answers, failures
