"""Versioned prompt templates for teacher and student, built from a user's history before a cutoff.

The teacher gets the paper's zero-shot chain-of-thought prompt: summarise the user's
preferences, then recommend categories and brands, then specific items (macro to micro). The
student gets a shorter prompt with the same content; it learns to answer like the teacher.

A prompt is keyed by (user, cutoff): it is written from the items *before* the cutoff only (the
item at the cutoff is the one the rationale will help to predict), so no prompt can contain its
own target. Bump a template's version when its text changes: cached answers are keyed by it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

TEACHER_VERSION = "teacher-v2"
TEACHER_NEW_ITEMS = "teacher-v3"  # step 3 asks for items not in the history
STUDENT_VERSION = "student-v3"

TEACHER_TEMPLATE = """\
Here is a {person}'s {history_name}, oldest first:
{{history}}

Think step by step, from the general to the specific, and answer in three numbered steps:
Step 1: Summarize the {person}'s preferences based on the history.
Step 2: Recommend {groups} that fit these preferences.
Step 3: Recommend specific {items} within those {short_groups}, and say why.
Keep each step to one or two sentences and do not repeat the history.
"""

# Small teachers answer step 3 of teacher-v2 with items from the history, which the next-item
# target never is (docs/results.md, "Where the signal is lost"): v3 asks for new ones.
TEACHER_NEW_ITEMS_TEMPLATE = TEACHER_TEMPLATE.replace(
    "Step 3: Recommend specific {items} within those {short_groups}, and say why.",
    "Step 3: Recommend specific {items} within those {short_groups} that are not in the "
    "history, and say why.",
)

STUDENT_TEMPLATE = """\
{History_name}, oldest first:
{{history}}

Step 1: the {person}'s preferences. Step 2: fitting {short_groups}. Step 3: specific {items}.
"""

TEMPLATES = {
    TEACHER_VERSION: TEACHER_TEMPLATE,
    TEACHER_NEW_ITEMS: TEACHER_NEW_ITEMS_TEMPLATE,
    STUDENT_VERSION: STUDENT_TEMPLATE,
}


@dataclass(frozen=True)
class Vocabulary:
    """The words a domain's prompts use: a prompt that speaks of brands confuses a small model
    on movie data (it lists genres until it runs out of tokens)."""

    person: str
    history_name: str
    items: str
    groups: str  # step 2 of the teacher prompt
    short_groups: str  # step 3 of the teacher prompt, step 2 of the student prompt
    category_label: str  # label of an item's category field in the history


VOCABULARIES = {
    "products": Vocabulary(
        person="customer",
        history_name="purchase history",
        items="products",
        groups="product categories and brands",
        short_groups="categories and brands",
        category_label="category",
    ),
    "movies": Vocabulary(
        person="viewer",
        history_name="watch history",
        items="movies",
        groups="genres",
        short_groups="genres",
        category_label="genres",
    ),
}
DOMAINS = tuple(VOCABULARIES)


def versioned(version: str, domain: str) -> str:
    """The template version a prompt records: the domain is part of it (answers are cached by
    version), and the default domain keeps the bare name so existing caches stay valid."""
    return version if domain == "products" else f"{version}-{domain}"


def template(version: str, domain: str = "products") -> str:
    """The template text of `version` in `domain`'s words, with a `{history}` slot."""
    words = VOCABULARIES[domain]
    return TEMPLATES[version].format(**vars(words), History_name=words.history_name.capitalize())


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt for a user at a cutoff. Held by the million for a large log's student, so it
    keeps what its text shows as a count (a tuple of item ids and a `__dict__` were ~40% of a
    prompt's memory: docs/benchmarks.md, "Scale")."""

    user_idx: int
    cutoff: int  # position of the target in the user's sequence = number of items before it
    version: str
    text: str
    shown: int  # how many items the text shows: the newest `shown` before the cutoff
    sample: int = 0  # which of teacher.samples answers to the same text this prompt asks for

    def history_items(self, sequence: Sequence[int]) -> tuple[int, ...]:
        """item_idx of the items the text shows, oldest first, from the user's `sequence`."""
        return tuple(int(i) for i in sequence[self.cutoff - self.shown : self.cutoff])


MAX_TITLE_WORDS = 12
MAX_CATEGORY_WORDS = 6
# The student's prompt is the short one: on a CPU its prompt tokens, not its answer, are most of
# the cost of a rationale (a 135M model reads ~200 tokens/s and batching does not help reading).
ITEM_WORDS = {
    TEACHER_VERSION: (MAX_TITLE_WORDS, MAX_CATEGORY_WORDS),
    TEACHER_NEW_ITEMS: (MAX_TITLE_WORDS, MAX_CATEGORY_WORDS),
    STUDENT_VERSION: (8, 3),
}


def _words(text: str, limit: int, *, keep_end: bool = False) -> str:
    words = text.split()
    if len(words) <= limit:
        return " ".join(words)
    return "... " + " ".join(words[-limit:]) if keep_end else " ".join(words[:limit]) + " ..."


def describe_item(
    item: Mapping[str, object],
    title_words: int = MAX_TITLE_WORDS,
    category_words: int = MAX_CATEGORY_WORDS,
    category_label: str = "category",
) -> str:
    """'Title (category: ...; brand: ...)' from whichever fields the item has.

    Shop titles run to 40 words and category paths to 15; a small model then copies them
    instead of reasoning, and every word costs prompt tokens. Titles keep their first words,
    category paths their last (most specific) ones.
    """
    title = _words(str(item.get("title") or f"item {item.get('item_id', '?')}"), title_words)
    details = []
    if item.get("category"):
        details.append(
            f"{category_label}: {_words(str(item['category']), category_words, keep_end=True)}"
        )
    if item.get("brand"):
        details.append(f"brand: {item['brand']}")
    return f"{title} ({'; '.join(details)})" if details else title


def build_prompt(
    user_idx: int,
    sequence: Sequence[int],
    cutoff: int,
    items: Mapping[int, Mapping[str, object]],
    *,
    version: str = TEACHER_VERSION,
    domain: str = "products",
    max_items: int = 20,
    token_budget: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> Prompt:
    """The prompt for predicting `sequence[cutoff]`: at most `max_items` items before it, newest kept.

    With `token_budget`, the oldest items are dropped until the history fits (`count_tokens`
    defaults to a whitespace word count; pass a tokenizer's for exact budgets). `domain` picks
    the prompt's words (`VOCABULARIES`).
    """
    if not 0 < cutoff <= len(sequence):
        raise ValueError(f"cutoff {cutoff} outside 1..{len(sequence)} for user {user_idx}")
    if domain not in VOCABULARIES:
        raise ValueError(f"unknown prompt domain {domain!r}; expected one of {DOMAINS}")
    text = template(version, domain)
    label = VOCABULARIES[domain].category_label
    title_words, category_words = ITEM_WORDS[version]
    shown = list(sequence[max(0, cutoff - max_items) : cutoff])
    count = count_tokens or (lambda text: len(text.split()))
    while True:
        lines = [
            f"{n}. {describe_item(items[i], title_words, category_words, label)}"
            for n, i in enumerate(shown, start=1)
        ]
        history = "\n".join(lines)
        if token_budget is None or len(shown) <= 1 or count(history) <= token_budget:
            break
        shown = shown[1:]
    return Prompt(
        user_idx, cutoff, versioned(version, domain), text.format(history=history), len(shown)
    )


# Marks of steps past 3 are read too, so that a "Step 4:" a model adds ends step 3.
STEP_MARK = re.compile(r"(?im)^\W*step\s*([1-9])\s*[:.)\-]\s*")
NUMBER_MARK = re.compile(r"(?m)^\W*([123])\s*[:.)\-]\s*")
# Small models sometimes run the steps together on one line: "... glass. Step 2: ...".
INLINE_STEP_MARK = re.compile(r"(?i)\bstep\s*([1-9])\s*:\s*")
# A header begun and not finished ("Step" or "Step 2" alone on the last line of a step, before
# the real "Step 2:"): not part of the step's text.
HEADER_STUB = re.compile(r"(?i)\n\W*step(?:\s*[1-9])?\W*$")


def parse_rationale(text: str) -> tuple[str, str, str] | None:
    """Split an answer into its three steps; None when any step is missing or empty.

    'Step 1:' markers (also '**Step 1:**') at line starts are used when present, so a numbered
    list inside a step stays in that step; then 'Step 1:' anywhere; then bare '1.', '2)', '3 -'
    at line starts.
    """
    for pattern in (STEP_MARK, INLINE_STEP_MARK, NUMBER_MARK):
        steps = _split(text, pattern)
        if steps is not None:
            return steps
    return None


def _split(text: str, pattern: re.Pattern[str]) -> tuple[str, str, str] | None:
    marks = [(m.start(), m.end(), m.group(1)) for m in pattern.finditer(text)]
    steps: dict[str, str] = {}
    for n, (_, end, label) in enumerate(marks):
        stop = marks[n + 1][0] if n + 1 < len(marks) else len(text)
        if not steps.get(label):  # a header written twice: the first one with text counts
            steps[label] = HEADER_STUB.sub("", text[end:stop].strip(" *\n\t")).strip(" *\n\t")
    if not all(steps.get(label) for label in ("1", "2", "3")):
        return None
    return steps["1"], steps["2"], steps["3"]
