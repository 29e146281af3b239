"""Keep a generated answer in three steps of bounded length, while it is being generated.

Why: a small student trained on a few dozen teacher answers often loops inside one step (a
genre list repeated until the token limit) and never writes step 3; on ml-100k half of its
rationales then had no step 3 to embed. A repetition penalty garbles the steps the model does
write, so instead each step gets a token budget: the answer starts with "Step 1:", a step that
runs past its budget is closed by writing the next step's header for the model, the answer may
not end before step 3 has begun, and it ends when step 3 runs out of budget. Headers the model
writes itself are followed, not duplicated. Greedy or sampled decoding is otherwise unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

STEPS = 3


@dataclass
class _Row:
    step: int = 0  # the step being written; 0 before "Step 1:"
    start: int = 0  # generated-token index where the current step's text begins
    forced: list[int] = field(default_factory=list)  # header tokens still to write


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
    ) -> None:
        self.tokenizer = tokenizer
        self.step_tokens = step_tokens
        self.prompt_width = prompt_width  # prompts are left-padded to one width
        # Every id that ends generation (a model's generation config may list several); the
        # tokenizer's own end-of-text first, as the one to write.
        ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        first = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.eos = list(dict.fromkeys(first + ids))
        self.headers = {n: self._header(n) for n in range(1, STEPS + 1)}
        self.rows: list[_Row] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if not self.rows:
            self.rows = [_Row() for _ in range(input_ids.shape[0])]
        generated = input_ids[:, self.prompt_width :]
        written = generated.shape[1]
        for n, row in enumerate(self.rows):
            if not row.forced and row.step < STEPS:
                self._follow_own_header(row, generated[n])
            if (
                not row.forced
                and row.step < STEPS
                and (row.step == 0 or written - row.start >= self.step_tokens)
            ):
                row.forced = list(self.headers[row.step + 1])
            if row.forced:
                token = row.forced.pop(0)
                if not row.forced:  # header written: the next step's text starts after it
                    row.step, row.start = row.step + 1, written + 1
                scores[n] = self._only(scores[n], token)
            elif row.step == STEPS and written - row.start >= self.step_tokens and self.eos:
                scores[n] = self._only(scores[n], self.eos[0])
            elif (row.step < STEPS or written == row.start) and self.eos:
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
        """Move on to step k+1 when the model wrote the header 'Step k+1:' itself."""
        if row.step == 0:
            return
        text = self.tokenizer.decode(generated[row.start :], skip_special_tokens=True)
        if re.search(rf"(?i)\bstep\s*{row.step + 1}\s*[:.)\-]", text):  # as the parser reads
            row.step, row.start = row.step + 1, generated.shape[0]

    @staticmethod
    def _only(scores: torch.Tensor, token: int) -> torch.Tensor:
        forced = torch.full_like(scores, -float("inf"))
        forced[token] = 0.0
        return forced
