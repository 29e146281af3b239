"""Keep a generated answer in three steps of bounded length, while it is being generated.

Why: a small student trained on a few dozen teacher answers often loops inside one step (a
genre list repeated until the token limit) and never writes step 3; on ml-100k half of its
rationales then had no step 3 to embed. A repetition penalty garbles the steps the model does
write, so instead each step gets a token budget:
  - the answer starts with "Step 1:";
  - a step that runs past its budget is closed by writing the next step's header for the model;
  - a step written for the model starts on the header's line (a line break there made the
    student write the header again, leaving the first one empty);
  - the answer may not end before step 3 has a word, and ends when step 3 runs out of budget
    or the model starts another header after it.
Headers the model writes itself are followed, not doubled. Decoding is otherwise unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from slim_core.prompts import INLINE_STEP_MARK, STEP_MARK

STEPS = 3


@dataclass
class _Row:
    step: int = 0  # the step being written; 0 before "Step 1:"
    start: int = 0  # generated-token index where the current step's text begins
    forced: list[int] = field(default_factory=list)  # header tokens still to write
    opened: bool = False  # the current step's header was written for the model
    done: bool = False  # step 3 is over: only the end may follow


def blank_tokens(tokenizer: Any) -> list[int]:
    """Ids of the tokens that write only white space (line breaks, spaces)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    special = set(tokenizer.all_special_ids)
    return [i for i, t in enumerate(texts) if t and not t.strip() and i not in special]


class StepBudget:
    """A transformers logits processor (called with the ids so far and the next-token scores).

    One instance per `generate()` call: it keeps per-row state across decoding steps.
    """

    def __init__(
        self,
        tokenizer: Any,
        step_tokens: int,
        prompt_width: int,
        eos_ids: int | list[int] | None = None,
        blank: list[int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.step_tokens = step_tokens
        self.prompt_width = prompt_width  # prompts are left-padded to one width
        # Every id that ends generation (a model's generation config may list several); the
        # tokenizer's own end-of-text first, as the one to write.
        ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        first = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.eos = list(dict.fromkeys(first + ids))
        # `blank_tokens(tokenizer)`, passed in by a caller that keeps it (it decodes every token)
        self.blank = blank_tokens(tokenizer) if blank is None else blank
        self.headers = {n: self._header(n) for n in range(1, STEPS + 1)}
        self.rows: list[_Row] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if not self.rows:
            self.rows = [_Row() for _ in range(input_ids.shape[0])]
        generated = input_ids[:, self.prompt_width :]
        written = generated.shape[1]
        for n, row in enumerate(self.rows):
            if not row.forced and not row.done and row.step > 0:
                self._follow_own_header(row, generated[n])
            in_step = written - row.start
            if row.done or (row.step == STEPS and in_step >= self.step_tokens):
                if self.eos:
                    scores[n] = self._only(scores[n], self.eos[0])
                continue
            if (
                not row.forced
                and row.step < STEPS
                and (row.step == 0 or in_step >= self.step_tokens)
            ):
                row.forced = list(self.headers[row.step + 1])
            if row.forced:
                token = row.forced.pop(0)
                if not row.forced:  # header written: the next step's text starts after it
                    row.step, row.start, row.opened = row.step + 1, written + 1, True
                scores[n] = self._only(scores[n], token)
                continue
            if in_step == 0 and row.opened:
                scores[n, self.blank] = -float("inf")  # go on on the header's line
            if (row.step < STEPS or in_step == 0) and self.eos:
                scores[n, self.eos] = -float("inf")  # no ending before step 3 has a word
        return scores

    def _header(self, n: int) -> list[int]:
        """Token ids of 'Step n:' on a new line (or after a space, for a tokenizer that cannot
        write a line break: the parser reads 'Step n:' anywhere)."""
        for text in (f"Step {n}:",) if n == 1 else (f"\nStep {n}:", f" Step {n}:"):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if self.tokenizer.decode(ids) == text:
                return ids
        return ids

    def _follow_own_header(self, row: _Row, generated: torch.Tensor) -> None:
        """Move on when the model wrote the next header itself; after step 3, any header ends."""
        text = self.tokenizer.decode(generated[row.start :], skip_special_tokens=True)
        # The parser's own step marks: a header the budget follows is one the parser splits at.
        if row.step == STEPS:  # a header at a line start, after some text of step 3
            row.done = any(text[: m.start()].strip() for m in STEP_MARK.finditer(text))
        elif any(
            m.group(1) == str(row.step + 1)
            for mark in (STEP_MARK, INLINE_STEP_MARK)
            for m in mark.finditer(text)
        ):
            row.step, row.start, row.opened = row.step + 1, generated.shape[0], False

    @staticmethod
    def _only(scores: torch.Tensor, token: int) -> torch.Tensor:
        forced = torch.full_like(scores, -float("inf"))
        forced[token] = 0.0
        return forced
