"""The in-process transformers backend on a tiny random model."""

from pathlib import Path

import pytest

from slim_core.llm import Decoding, Generation
from slim_core.llm.transformers_local import TransformersBackend
from slim_core.prompts import parse_rationale
from tests.tiny_llm import CORPUS, build_tiny_llm, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def test_batched_generation_matches_one_by_one(tiny_model):
    prompts = [
        "Step 1: the customer",
        "Purchase history, oldest first: 1. Widget number 3 (category: Lab)",
        "Step 3: a",
    ]
    batched = TransformersBackend(str(tiny_model), batch_size=8).generate(
        prompts, Decoding(max_tokens=12)
    )
    single = TransformersBackend(str(tiny_model), batch_size=1).generate(
        prompts, Decoding(max_tokens=12)
    )
    assert all(isinstance(r, Generation) for r in batched + single)
    # Greedy decoding with left padding gives the same text as unpadded one-by-one decoding.
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(0 < r.tokens_out <= 12 and r.tokens_in > 0 for r in batched)


def test_prompts_read_one_by_one_decode_in_a_batch_like_a_padded_batch(tiny_model, monkeypatch):
    """On CPUs each prompt is read alone (no padding tokens to pay for) and the rows then decode
    together from one left-padded cache: the answers must be those of the plain padded batch."""
    prompts = [
        "Step 1: the customer",
        "Purchase history, oldest first: 1. Widget number 3 (category: Lab) 2. Widget 4",
        "Step 3: a",
        "Purchase history, oldest first: 1. Widget",
    ]
    decoding = Decoding(max_tokens=12, step_tokens=4)
    per_row = TransformersBackend(str(tiny_model), batch_size=4)
    assert per_row.prefill == "per_row"  # the CPU default
    caches = []
    original = TransformersBackend._per_row_prefill

    def spy(self, inputs, max_new_tokens):
        cache = original(self, inputs, max_new_tokens)
        caches.append(
            (int(cache.get_seq_length()), inputs["input_ids"].shape, type(cache).__name__)
        )
        return cache

    monkeypatch.setattr(TransformersBackend, "_per_row_prefill", spy)
    rows = per_row.generate(prompts, decoding)
    padded = TransformersBackend(str(tiny_model), batch_size=4, prefill="batched")
    plain = padded.generate(prompts, decoding)
    assert len(caches) == 1  # only the per-row backend built a cache itself
    length, (batch, width), kind = caches[0]
    assert batch == 4 and length == width - 1  # generate() reads the last prompt token itself
    assert kind == "StaticCache"  # room for the whole answer, not grown a token at a time
    assert [r.text for r in rows] == [r.text for r in plain]
    assert [r.tokens_in for r in rows] == [r.tokens_in for r in plain]
    with pytest.raises(ValueError, match="prefill"):
        TransformersBackend(str(tiny_model), prefill="sideways")


def test_a_prompt_that_starts_like_an_earlier_one_reads_only_the_rest(tiny_model, monkeypatch):
    """A user's prompts at successive cutoffs list the same history one item longer: the shared
    start is read once and its keys and values reused. The answers must not change."""
    import slim_core.llm.transformers_local as local

    history = "Purchase history, oldest first: 1. Widget number 3 (category: Lab)"
    prompts = [
        f"{history}\nStep 1: the customer",
        f"{history} 2. Gadget 7 (category: Tools)\nStep 1: the customer",
        "Step 3: a",
        f"{history} 2. Gadget 7 (category: Tools) 3. Widget 9\nStep 1: the customer",
    ]
    shared = []
    original = local.shared_prefix

    def spy(tokens, earlier):
        found = original(tokens, earlier)
        shared.append(found)
        return found

    monkeypatch.setattr(local, "shared_prefix", spy)
    built = []
    prefill = TransformersBackend._per_row_prefill
    monkeypatch.setattr(
        TransformersBackend,
        "_per_row_prefill",
        lambda self, *args: built.append(prefill(self, *args)) or built[-1],
    )
    decoding = Decoding(max_tokens=12, step_tokens=4)
    rows = TransformersBackend(str(tiny_model), batch_size=4).generate(prompts, decoding)
    assert len(built) == 1 and built[0] is not None  # no fallback to the padded batch
    reused = [length for length, _ in shared if length]
    assert len(reused) == 2 and min(reused) >= local.SHARED_PREFIX_MIN_TOKENS
    assert shared[3][1] == 1  # the longest shared start: the prompt one item shorter
    padded = TransformersBackend(str(tiny_model), batch_size=4, prefill="batched")
    alone = TransformersBackend(str(tiny_model), batch_size=1, prefill="batched")
    texts = [r.text for r in rows]
    assert texts == [r.text for r in padded.generate(prompts, decoding)]
    assert texts == [r.text for r in alone.generate(prompts, decoding)]


def test_model_id_is_stable_and_names_the_model(tiny_model):
    a, b = TransformersBackend(str(tiny_model)), TransformersBackend(str(tiny_model))
    assert a.model_id == b.model_id and tiny_model.name in a.model_id


def test_auto_dtype_is_bfloat16_only_where_the_hardware_has_it(tiny_model, monkeypatch):
    from slim_core.llm import transformers_local

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(
            transformers_local, "native_bfloat16", lambda device="cpu", native=native: native
        )
        assert transformers_local.resolve_dtype("auto") == expected
        assert transformers_local.resolve_dtype("float32") == "float32"  # explicit wins
        backend = TransformersBackend(str(tiny_model), dtype="auto")
        assert backend.dtype == expected
        # the id names the dtype actually used: answers cached on one machine are not taken for
        # another dtype's on the next
        assert backend.model_id.endswith(":bfloat16") == (expected == "bfloat16")
    cpu_flags = Path("/proc/cpuinfo").read_text().split()
    monkeypatch.undo()
    assert transformers_local.native_bfloat16("cpu") == (
        "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags
    )


def test_repetition_penalty_is_applied_and_keys_stay_stable(tiny_model):
    from slim_core.teacher.cache import answer_key

    plain, penalised = Decoding(max_tokens=12), Decoding(max_tokens=12, repetition_penalty=1.5)
    assert "repetition_penalty" not in plain.as_dict()  # old cache keys are unchanged
    assert answer_key("m", "v", "p", plain.as_dict()) != answer_key(
        "m", "v", "p", penalised.as_dict()
    )
    backend = TransformersBackend(str(tiny_model), batch_size=2)
    prompts = ["Step 1: the customer", "Step 3: a"]
    a = [r.text for r in backend.generate(prompts, plain)]
    b = [r.text for r in backend.generate(prompts, penalised)]
    assert all(b) and a != b  # the penalty reaches generate()


def test_bfloat16_weights_generate_and_get_their_own_model_id(tiny_model):
    import torch

    fp32 = TransformersBackend(str(tiny_model))
    bf16 = TransformersBackend(str(tiny_model), batch_size=2, dtype="bfloat16")
    assert fp32.model_id.count(":") == 2  # float32 ids keep their old form (cached answers)
    assert bf16.model_id == fp32.model_id + ":bfloat16"  # answers differ: not the same cache key
    results = bf16.generate(["Step 1: the customer", "Step 3: a"], Decoding(max_tokens=8))
    assert all(isinstance(r, Generation) and r.tokens_out > 0 for r in results)
    assert next(bf16._model.parameters()).dtype == torch.bfloat16


def _greedy_with_budget(tokenizer, step_tokens: int, wanted, max_tokens: int = 80) -> str:
    """Decode greedily under StepBudget, the 'model' preferring the tokens `wanted(text)` lists."""
    import torch

    from slim_core.llm.step_budget import StepBudget

    prompt = tokenizer("Purchase history", add_special_tokens=False)["input_ids"]
    budget = StepBudget(tokenizer, step_tokens, len(prompt))
    ids = list(prompt)
    for _ in range(max_tokens):
        scores = torch.zeros(1, len(tokenizer))
        text = tokenizer.decode(ids[len(prompt) :])
        for rank, token in enumerate(wanted(text)):
            scores[0, token] = 100.0 - rank
        chosen = int(budget(torch.tensor([ids]), scores).argmax())
        ids.append(chosen)
        if chosen == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[len(prompt) :])


def test_step_budget_writes_the_missing_steps_and_no_ending_before_step_3(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    glass = tokenizer(" glass", add_special_tokens=False)["input_ids"][0]
    # A model that wants to stop at once, else loops on one word: the budget starts the answer,
    # closes each step after 5 tokens, refuses the early ending and ends after step 3.
    text = _greedy_with_budget(tokenizer, 5, lambda _: [tokenizer.eos_token_id, glass])
    steps = " Step 1: glass glass glass glass glass Step 2: glass glass glass glass glass Step 3:"
    assert text == steps.strip() + " glass</s>"  # (this tokenizer has no line break)
    assert parse_rationale(text.removesuffix("</s>")) is not None


def test_step_budget_follows_headers_the_model_writes_itself(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    script = tokenizer(
        "Step 1: lab glass Step 2: Pyrex Step 3: a beaker", add_special_tokens=False
    )["input_ids"]
    eos = tokenizer.eos_token_id

    def follow_script(text: str) -> list[int]:  # the next token of the script, then the end
        done = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        return [script[done], eos] if done < len(script) else [eos]

    text = _greedy_with_budget(tokenizer, 20, follow_script)
    # short steps ended by the model itself: nothing forced, nothing doubled
    assert text == "Step 1: lab glass Step 2: Pyrex Step 3: a beaker</s>"


def test_step_budget_keeps_a_forced_step_on_its_line_and_ends_at_a_header_after_step_3():
    lines = ["Step 1: lab glass\nStep 2: Pyrex\nStep 3: a beaker\nStep 4: more"] * 20
    tokenizer = tiny_tokenizer(CORPUS + lines)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    newline, glass = ids("\n")[0], ids(" glass")[0]
    # Right after a header written for it, the model would break the line (and then write the
    # header again, leaving the first empty): it goes on on the header's line instead.
    text = _greedy_with_budget(tokenizer, 3, lambda _: [newline, glass])
    assert text.startswith("Step 1: glass") and "\nStep 2: glass" in text
    assert "\nStep 3: glass" in text and parse_rationale(text.removesuffix("</s>")) is not None
    # A model that goes on to a fourth step is ended at its header.
    script = ids("Step 1: lab glass\nStep 2: Pyrex\nStep 3: a beaker\nStep 4: more")

    def follow_script(text: str) -> list[int]:
        done = len(ids(text)) if text else 0
        return [script[done]] if done < len(script) else [tokenizer.eos_token_id]

    text = _greedy_with_budget(tokenizer, 20, follow_script)
    assert text.startswith("Step 1: lab glass\nStep 2: Pyrex\nStep 3: a beaker\n")
    assert text.endswith("</s>") and "more" not in text
    assert parse_rationale(text.removesuffix("</s>"))[2] == "a beaker"


def test_step_budget_in_generate_bounds_every_step_and_batches_like_one_by_one(tiny_model):
    prompts = ["Step 1: the customer", "Purchase history, oldest first: 1. Widget", "Step 3: a"]
    budget = Decoding(max_tokens=40, step_tokens=6)
    assert budget.as_dict()["step_tokens"] == 6 and "step_tokens" not in Decoding().as_dict()
    batched = TransformersBackend(str(tiny_model), batch_size=2).generate(prompts, budget)
    single = TransformersBackend(str(tiny_model), batch_size=1).generate(prompts, budget)
    assert [r.text for r in batched] == [r.text for r in single]
    free = TransformersBackend(str(tiny_model), batch_size=2).generate(
        prompts, Decoding(max_tokens=40)
    )
    assert not any(parse_rationale(r.text) for r in free)  # a random model writes no steps
    tokenizer = TransformersBackend(str(tiny_model))
    tokenizer.load()
    for result in batched:
        steps = parse_rationale(result.text)
        assert result.text.startswith("Step 1:") and steps is not None
        for step in steps:
            assert len(tokenizer._tokenizer(step, add_special_tokens=False)["input_ids"]) <= 6


def test_a_local_teacher_with_a_step_budget_answers_where_it_failed_without(tiny_model, tmp_path):
    from slim_core.config import TeacherConfig
    from slim_core.prompts import Prompt
    from slim_core.teacher.cache import AnswerCache
    from slim_core.teacher.run import ask_teacher
    from slim_core.teacher.stage import decoding, make_backend

    prompts = [
        Prompt(user_idx=n, cutoff=3, version="teacher-v2", text=f"Widget {n}", shown=1)
        for n in range(3)
    ]
    reports = {}
    for step_tokens in (None, 8):
        cfg = TeacherConfig(
            model=str(tiny_model), max_tokens=48, step_tokens=step_tokens, malformed_retries=0
        )
        assert decoding(cfg).step_tokens == step_tokens
        reports[step_tokens] = ask_teacher(
            prompts,
            make_backend(cfg),
            AnswerCache(tmp_path / "cache"),
            decoding(cfg),
            malformed_retries=0,
        )
    # a random model never writes the three steps itself: every prompt is a dead letter ...
    assert (reports[None].answered, reports[None].failed) == (0, 3)
    # ... and with the budget every answer has them (a new cache key: asked again, not reused)
    assert (reports[8].answered, reports[8].failed, reports[8].cached) == (3, 0, 0)
    with pytest.raises(ValueError, match="transformers backend only"):
        TeacherConfig(model="gpt", backend="openai", step_tokens=8)
