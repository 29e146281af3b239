"""The in-process transformers backend on a tiny random model."""

from pathlib import Path

import pytest

from slim_core.llm import Decoding, Generation
from slim_core.llm.transformers_local import TransformersBackend
from tests.tiny_llm import build_tiny_llm


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
