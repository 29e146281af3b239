"""Ask the teacher for rationales batch by batch: cached, re-asked when malformed, within budget.

    report = ask_teacher(prompts, backend, AnswerCache(folder), decoding, batch_size=32)

Prompts already answered (same model, template, prompt and decoding) are skipped; the rest go
to the backend; answers without the three steps are asked again up to `malformed_retries`
times; answers and failures are written `batch_size` at a time, one file each, so a kill loses
at most one batch of answers and the requests in flight. A backend that streams its answers
(`generate_each`: the HTTP client) gets every prompt at once and keeps its connections busy
while a batch is written; others (local models) get one batch per call. With `budget_usd`,
prompts go batch by batch and the run stops cleanly before a batch would push the spend over
the budget. The spend is the cache's ledger (every run through this cache, `slim teacher
reset-budget` starts it again), not this run's alone. A reply without `usage` is charged by an
estimate from its text, and so is a failure the endpoint may have billed (a timeout while it
answered, a reply cut short), at the prompt plus `max_tokens`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tqdm.auto import tqdm

from slim_core.llm.base import Decoding, Generation, GenerationFailure, LLMBackend
from slim_core.prompts import Prompt, parse_rationale
from slim_core.teacher.cache import AnswerCache, prompt_key
from storage import canonical_hash

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
    estimated_calls: int = 0  # calls charged by an estimate (no `usage`, or a billed failure)

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
            self.estimated_calls + other.estimated_calls,
        )

    def latency_percentiles(self) -> dict[str, float]:
        if not self.latencies_s:
            return {}
        ordered = sorted(self.latencies_s)
        return {
            f"p{q}": ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
            for q in (50, 90, 99)
        }


@dataclass(frozen=True)
class Batch:
    """Prompts asked in one task: their content key (a hash of their answer keys) and whether
    every one is already done on disk, which makes the task a cache hit."""

    prompts: list[Prompt]
    key: str
    done: bool

    def cached_report(self) -> TeacherReport:
        """What asking a done batch again reports: every prompt cached, nothing paid."""
        return TeacherReport(requested=len(self.prompts), cached=len(self.prompts))


def batches(
    prompts: Sequence[Prompt],
    size: int,
    model_id: str,
    cache: AnswerCache,
    decoding: Decoding,
    skip_failed: bool,
) -> list[Batch]:
    """`prompts` in batches of `size`, each keyed and checked against one read of the cache."""
    done = cache.done_keys(failed_too=skip_failed)
    params = decoding.as_dict()
    result = []
    for start in range(0, len(prompts), size):
        part = list(prompts[start : start + size])
        keys = [prompt_key(model_id, prompt, params) for prompt in part]
        result.append(Batch(part, canonical_hash(keys, 16), all(k in done for k in keys)))
    return result


def estimated_tokens(text: str) -> int:
    """Tokens in `text` by OpenAI's rule of thumb (about 4 characters a token): for replies
    without `usage`, where the endpoint's tokenizer is not at hand."""
    return max(1, -(-len(text) // 4))


@dataclass
class _Charges:
    """What each prompt cost over its attempts, until its row is written with it."""

    report: TeacherReport
    prices: Prices
    max_tokens: int
    open: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def charge(self, key: str, prompt: Prompt, result: Generation | GenerationFailure) -> None:
        tokens_in, tokens_out, estimated = 0, 0, False
        if isinstance(result, Generation):
            tokens_in, tokens_out = result.tokens_in, result.tokens_out
            if not tokens_in and not tokens_out:  # the reply had no `usage`
                tokens_in, tokens_out = estimated_tokens(prompt.text), estimated_tokens(result.text)
                estimated = True
        elif result.billed:
            tokens_in, tokens_out, estimated = estimated_tokens(prompt.text), self.max_tokens, True
        cost = self.prices.cost(tokens_in, tokens_out)
        self.report.cost_usd += cost
        self.report.estimated_calls += estimated
        usd, was_estimated = self.open.get(key, (0.0, False))
        self.open[key] = (usd + cost, was_estimated or estimated)

    def settle(self, key: str) -> dict[str, float | bool]:
        usd, estimated = self.open.pop(key, (0.0, False))
        return {"cost_usd": usd, "cost_estimated": estimated}


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
    charges = _Charges(report, prices, decoding.max_tokens)
    done = cache.done_keys(failed_too=skip_failed)
    todo = []
    params = decoding.as_dict()
    for prompt in prompts:
        key = prompt_key(backend.model_id, prompt, params)
        if key in done:
            report.cached += 1
        else:
            todo.append((key, prompt))
    bar = tqdm(
        total=len(todo), desc=progress, unit="prompt", disable=True if progress is None else None
    )
    stream = getattr(backend, "generate_each", None)
    asking = _Asking(backend, decoding, malformed_retries, charges, require_steps)
    # A streaming backend gets every prompt at once (its own bound keeps the requests in flight)
    # and answers are written `batch_size` at a time; otherwise, or under a budget (each batch
    # is checked against what was spent), one batch at a time.
    at_once = stream is not None and budget_usd is None
    chunks = (
        [todo] if at_once else [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    )
    writer = _Writer(cache, report, bar, progress or "teacher", batch_size)
    for chunk in chunks:
        if budget_usd is not None and _past_budget(chunk, cache, prices, decoding, budget_usd):
            report.stopped_by_budget = True
            break
        try:
            asking.rounds(chunk, writer.keep)
        finally:  # on a stop or a refused key too: what was paid for stays, and is counted
            writer.flush()
    bar.close()
    _warn_estimates(report, prices)
    return report


def _past_budget(
    batch: list[tuple[str, Prompt]],
    cache: AnswerCache,
    prices: Prices,
    decoding: Decoding,
    budget_usd: float,
) -> bool:
    """Whether the batch's estimated cost would take what this cache has spent past the budget."""
    estimate = prices.cost(
        sum(len(p.text.split()) * 2 for _, p in batch), decoding.max_tokens * len(batch)
    )
    spent = cache.spent_usd()  # every run's, from the ledger
    if spent + estimate <= budget_usd:
        return False
    log.warning(
        "budget: stopping before a batch estimated at $%.4f would pass $%.2f (spent "
        "$%.4f through this cache; `slim teacher reset-budget` starts again)",
        estimate,
        budget_usd,
        spent,
    )
    return True


def _warn_estimates(report: TeacherReport, prices: Prices) -> None:
    if report.estimated_calls and (prices.input_per_1k or prices.output_per_1k):
        log.warning(
            "%d call(s) charged by an estimate (a reply without `usage`, or a failure the "
            "endpoint may have billed): about 4 characters a token, max_tokens for failures",
            report.estimated_calls,
        )


@dataclass
class _Writer:
    """Answer and failure rows kept until `every` of them (or the end) are written to the cache."""

    cache: AnswerCache
    report: TeacherReport
    bar: tqdm
    label: str
    every: int
    answers: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    parts: int = 0

    def keep(self, outcome: dict) -> None:
        (self.answers if "answer" in outcome else self.failures).append(outcome)
        if len(self.answers) + len(self.failures) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.answers and not self.failures:
            return
        self.cache.write_answers(self.answers)
        self.cache.write_failures(self.failures)
        self.report.answered += len(self.answers)
        self.report.failed += len(self.failures)
        self.bar.update(len(self.answers) + len(self.failures))
        self.parts += 1
        log.info(
            "%s, written part %d: %d answered, %d failed",
            self.label,
            self.parts,
            len(self.answers),
            len(self.failures),
        )
        self.answers.clear()
        self.failures.clear()


@dataclass
class _Asking:
    """Prompts to a backend, a malformed answer asked again up to `malformed_retries` times."""

    backend: LLMBackend
    decoding: Decoding
    malformed_retries: int
    charges: _Charges
    require_steps: bool

    def rounds(self, todo: list[tuple[str, Prompt]], keep: Callable[[dict], None]) -> None:
        """Settle every prompt into an answer or a failure row, handed to `keep` as results
        arrive: when a stop or a refused key ends the asking early, what was already paid for
        has been kept."""
        pending = list(todo)
        attempts = {key: 0 for key, _ in todo}
        for round_ in range(self.malformed_retries + 1):
            again = []
            asked = _results(self.backend, [p.text for _, p in pending], self.decoding)
            # closing: an error or interrupt here must cancel the requests in flight at once,
            # not when the traceback that holds the iterator is gone
            with contextlib.closing(asked) as results:
                for index, result in results:
                    key, prompt = pending[index]
                    attempts[key] += result.attempts
                    outcome = _settle(
                        key, prompt, result, self.backend.model_id, attempts[key], self.charges,
                        self.require_steps, last_round=round_ == self.malformed_retries,
                    )  # fmt: skip
                    if outcome is None:
                        again.append((key, prompt))
                    else:
                        keep(outcome)
            pending = again
            if not pending:
                break


def _settle(
    key: str,
    prompt: Prompt,
    result: Generation | GenerationFailure,
    model_id: str,
    attempts: int,
    charges: _Charges,
    require_steps: bool,
    last_round: bool,
) -> dict | None:
    """An answer row, a failure row, or None when a malformed answer is to be asked again."""
    common = {
        "key": key,
        "user_idx": prompt.user_idx,
        "cutoff": prompt.cutoff,
        "model": model_id,
        "template_version": prompt.version,
    }
    report = charges.report
    report.calls += result.attempts
    charges.charge(key, prompt, result)
    if isinstance(result, GenerationFailure):
        return {
            **common,
            "error": result.error,
            "raw_answer": result.raw,
            "attempts": attempts,
            "failed_at": _now(),
            **charges.settle(key),
        }
    report.tokens_in += result.tokens_in
    report.tokens_out += result.tokens_out
    report.latencies_s.append(result.latency_s)
    if not require_steps or parse_rationale(result.text) is not None:
        return {
            **common,
            "answer": result.text,
            "tokens_in": result.tokens_in,
            "tokens_out": result.tokens_out,
            "latency_s": result.latency_s,
            "attempts": attempts,
            "created_at": _now(),
            **charges.settle(key),
        }
    if not last_round:
        return None
    return {
        **common,
        "error": "answer lacks the three steps",
        "raw_answer": result.text,
        "attempts": attempts,
        "failed_at": _now(),
        **charges.settle(key),
    }


def _results(
    backend: LLMBackend, prompts: list[str], decoding: Decoding
) -> Iterator[tuple[int, Generation | GenerationFailure]]:
    """(index, result) as each arrives from a streaming backend, else after the whole batch."""
    stream = getattr(backend, "generate_each", None)
    if stream is None:
        yield from enumerate(backend.generate(prompts, decoding))
        return
    with contextlib.closing(stream(prompts, decoding)) as results:
        yield from results
