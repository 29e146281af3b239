"""The OpenAI-compatible backend against a real loopback server with injected faults."""

import pytest

from slim_core.errors import ConfigError
from slim_core.llm import Decoding, Generation, GenerationFailure
from slim_core.llm.openai_http import OpenAICompatibleBackend
from tests.fake_openai import GOOD_ANSWER

SECRET = "sk-test-secret-key-123456"


@pytest.fixture
def server(fake_openai, monkeypatch):
    fake_openai.reset()
    monkeypatch.setenv("SLIM_TEST_KEY", SECRET)
    return fake_openai


def backend(server, **overrides):
    settings = {
        "base_url": server.url,
        "model": "teacher-test",
        "api_key_env": "SLIM_TEST_KEY",
        "max_concurrency": 8,
        "timeout_s": 1.5,
        "max_retries": 3,
        "backoff_s": 0.01,
    }
    return OpenAICompatibleBackend(**{**settings, **overrides})


def test_answers_every_prompt_in_order(server):
    prompts = [f"prompt {n}" for n in range(20)]
    results = backend(server).generate(prompts, Decoding(max_tokens=64))
    assert all(isinstance(r, Generation) and r.text == GOOD_ANSWER for r in results)
    assert results[3].tokens_in == 2 and results[3].tokens_out == len(GOOD_ANSWER.split())
    assert set(server.authorizations) == {f"Bearer {SECRET}"}


def test_high_concurrency_keeps_its_connections_and_its_limit(server):
    """Concurrency 40 runs on 40 one-connection clients: connections are
    kept alive and reused, and no more than 40 requests are ever in flight."""
    server.reset(latency_s=0.05)
    prompts = [f"prompt {n}" for n in range(160)]
    results = backend(server, max_concurrency=40).generate(prompts, Decoding(max_tokens=64))
    assert all(isinstance(r, Generation) for r in results)
    assert all(server.calls[p] == 1 for p in prompts)
    assert 16 < server.peak_in_flight <= 40  # many clients at once, never more than the bound
    assert len(server.connections) <= 40  # connections reused, not reopened per request


def test_connections_outlive_a_batch_and_close_ends_them(server):
    """Batches reuse the connections of the batches before them (a new event loop per batch
    reopened them all), also when called from inside a running event loop; `close` ends them
    and a later batch opens new ones. A pickled copy starts afresh."""
    import asyncio
    import pickle

    server.reset(latency_s=0.02)
    teacher = backend(server, max_concurrency=6)
    for batch in range(3):
        results = teacher.generate([f"b{batch} p{n}" for n in range(12)], Decoding())
        assert all(isinstance(r, Generation) for r in results)

    async def inside_a_loop():
        return teacher.generate(["from a loop"], Decoding())

    assert isinstance(asyncio.run(inside_a_loop())[0], Generation)
    assert len(server.connections) <= 6
    copy = pickle.loads(pickle.dumps(teacher))
    assert isinstance(copy.generate(["copied"], Decoding())[0], Generation)
    copy.close()
    loop_thread = teacher._runner.thread
    teacher.close()
    assert not loop_thread.is_alive()
    before = set(server.connections)
    assert isinstance(teacher.generate(["after close"], Decoding())[0], Generation)
    assert set(server.connections) - before  # a new connection
    teacher.close()


@pytest.mark.parametrize("fault", ["429", "500", "slow", "drop", "malformed"])
def test_transient_faults_are_retried_until_answered(server, fault):
    server.reset({"p0": [fault, fault], "p1": [fault]})
    results = backend(server).generate(["p0", "p1", "p2"], Decoding())
    assert [type(r) for r in results] == [Generation] * 3
    assert [r.attempts for r in results] == [3, 2, 1]
    assert server.after_answer == 0  # nothing asked again once answered


def test_persistent_faults_end_as_failures_with_attempts(server):
    server.reset({"p0": ["500"] * 10, "p1": ["429"] * 10})
    results = backend(server, max_retries=2).generate(["p0", "p1", "p2"], Decoding())
    assert isinstance(results[0], GenerationFailure) and "HTTP 500" in results[0].error
    assert results[0].attempts == 3 and server.calls["p0"] == 3
    assert isinstance(results[1], GenerationFailure) and "HTTP 429" in results[1].error
    assert isinstance(results[2], Generation)


def test_client_errors_are_not_retried(server):
    server.reset({"p0": ["400"]})
    results = backend(server).generate(["p0"], Decoding())
    assert isinstance(results[0], GenerationFailure) and results[0].attempts == 1
    assert "HTTP 400" in results[0].error and server.calls["p0"] == 1
    wrong_path = backend(server, base_url=server.url + "/nowhere").generate(["p1"], Decoding())
    assert isinstance(wrong_path[0], GenerationFailure) and "HTTP 404" in wrong_path[0].error


def test_missing_api_key_is_a_config_error_without_the_key(server, monkeypatch):
    monkeypatch.delenv("SLIM_TEST_KEY")
    with pytest.raises(ConfigError, match="SLIM_TEST_KEY"):
        backend(server).generate(["p0"], Decoding())


def test_the_key_never_appears_in_failures(server):
    server.reset({"p0": ["500"] * 10})
    results = backend(server, max_retries=1).generate(["p0"], Decoding())
    assert SECRET not in repr(results)


def test_answers_stream_back_and_closing_early_cancels_the_rest(server):
    """`generate_each` yields each answer as it arrives; a caller that stops (an error, a kill)
    cancels the requests not yet answered instead of paying for all of them."""
    import contextlib

    server.reset(latency_s=0.05)
    client = backend(server, max_concurrency=4)
    prompts = [f"prompt {n}" for n in range(60)]
    seen = {}
    with contextlib.closing(client.generate_each(prompts, Decoding(max_tokens=64))) as results:
        for index, result in results:
            seen[index] = result
            if len(seen) == 6:
                break
    assert all(isinstance(r, Generation) for r in seen.values()) and len(seen) == 6
    calls = server.settled_calls()
    # At most 2 x max_concurrency run ahead of the caller: answered-but-untaken or in flight.
    assert 6 <= calls <= 6 + 2 * 4
    # The backend still works after an early stop.
    assert all(isinstance(r, Generation) for r in client.generate(prompts[:5], Decoding()))


def test_requests_go_through_the_proxy_the_environment_names(server, monkeypatch):
    """HTTP_PROXY is honoured (with NO_PROXY unset for loopback): a real forwarding proxy on
    loopback sees every request, and its credentials never reach the endpoint."""
    import asyncio
    import base64
    import threading

    seen: list[tuple[str, str]] = []

    async def relay(reader, writer):
        upstream = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("Content-Length", 0)))
                seen.append((target, headers.pop("Proxy-Authorization", "")))
                host_port = target.split("/")[2]
                path = "/" + target.split("/", 3)[3]
                if upstream is None:
                    host, port = host_port.split(":")
                    upstream = await asyncio.open_connection(host, int(port))
                up_reader, up_writer = upstream
                request = f"{method} {path} {version}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in headers.items()
                )
                up_writer.write(request.encode("latin-1") + b"\r\n" + body)
                reply_head = await up_reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in reply_head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                writer.write(reply_head + await up_reader.readexactly(length))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    loop = asyncio.new_event_loop()
    proxy_server = loop.run_until_complete(asyncio.start_server(relay, "127.0.0.1", 0))
    port = proxy_server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{port}")
        prompts = [f"prompt {n}" for n in range(6)]
        results = backend(server, max_concurrency=2).generate(prompts, Decoding())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert all(isinstance(r, Generation) for r in results)
    assert len(seen) == 6
    assert all(target == f"{server.url}/chat/completions" for target, _ in seen)
    credentials = base64.b64encode(b"user:p@ss").decode()
    assert {auth for _, auth in seen} == {f"Basic {credentials}"}
    assert all(calls == 1 for calls in server.calls.values()) and len(server.calls) == 6


def test_an_unsupported_proxy_scheme_is_a_clear_error(server, monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ConfigError, match="proxy scheme 'socks5'"):
        backend(server).generate(["prompt"], Decoding())


def _self_signed(folder):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slim test endpoint")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_endpoints_are_verified(tmp_path, monkeypatch):
    """Real TLS on loopback: answered when the certificate is trusted (SSL_CERT_FILE, as for a
    company CA), a recorded failure naming the certificate when it is not."""
    import ssl

    from tests.fake_openai import FakeOpenAI

    cert_file, key_file = _self_signed(tmp_path)
    server = FakeOpenAI()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    server.start()
    url = server.url.replace("http://", "https://")
    try:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        settings = {"base_url": url, "model": "m", "api_key_env": None, "backoff_s": 0.01}
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        trusted = OpenAICompatibleBackend(**settings).generate(["p1", "p2"], Decoding())
        assert all(isinstance(r, Generation) and r.text == GOOD_ANSWER for r in trusted)

        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = OpenAICompatibleBackend(**settings, max_retries=0).generate(["p3"], Decoding())
        assert isinstance(untrusted[0], GenerationFailure)
        assert "certificate" in untrusted[0].error.lower()
        assert "p3" not in server.calls  # nothing was sent to an endpoint it could not verify
    finally:
        server.stop()


def test_a_key_no_header_can_carry_is_refused_without_showing_it(server, monkeypatch):
    monkeypatch.setenv("SLIM_TEST_KEY", SECRET + "\n")
    with pytest.raises(ConfigError, match="SLIM_TEST_KEY contains spaces, line breaks") as error:
        backend(server).generate(["prompt"], Decoding())
    assert SECRET not in str(error.value)


def test_transport_errors_never_quote_the_key():
    from slim_core.llm.openai_http import _LoopRunner, _redacted

    runner = _LoopRunner.__new__(_LoopRunner)  # only its key is read
    runner.key = SECRET
    text = _redacted(f"Illegal header value b'Bearer {SECRET}' / {SECRET}", runner)
    assert SECRET not in text and "***" in text


def retry_waits(caplog) -> list[float]:
    """The backoff waits the backend decided on, from its log (what it then sleeps)."""
    import re

    return [float(m) for m in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]


def test_a_retry_after_past_the_cap_dead_letters_the_prompt_at_once(server, caplog):
    """A 429 asking for an hour (or forever) is not waited for: the prompt fails at once with
    the reason, and nothing else waits behind it."""
    server.reset({"p0": ["429:3600"], "p1": ["429:inf"], "p2": ["429:0.05"]})
    with caplog.at_level("INFO", logger="slim_core.llm"):
        results = backend(server, max_backoff_s=2.0).generate(["p0", "p1", "p2"], Decoding())
    [wait] = retry_waits(caplog)  # p2's alone: neither the hour nor the cap was waited
    assert 0.05 <= wait <= 0.07  # its Retry-After, plus at most a quarter of jitter
    for failed in results[:2]:
        assert isinstance(failed, GenerationFailure) and failed.attempts == 1
        assert "past max_backoff_s 2 s" in failed.error and failed.status == 429
    assert server.calls["p0"] == server.calls["p1"] == 1
    assert isinstance(results[2], Generation) and results[2].attempts == 2


def test_our_own_backoff_never_waits_past_the_cap(server, caplog):
    server.reset({"p0": ["500", "500"]})
    with caplog.at_level("INFO", logger="slim_core.llm"):
        [result] = backend(server, backoff_s=30.0, max_backoff_s=0.1).generate(["p0"], Decoding())
    assert isinstance(result, Generation) and result.attempts == 3
    assert retry_waits(caplog) == [0.1, 0.1]  # 30 and 60 s asked, the cap waited each time


def test_an_endpoint_echoing_the_key_gets_it_neither_stored_nor_logged(server, caplog):
    server.reset({"p0": ["echo500"] * 5, "p1": ["echo400"]})
    with caplog.at_level("INFO", logger="slim_core.llm"):
        results = backend(server, max_retries=1).generate(["p0", "p1"], Decoding())
    assert all(isinstance(r, GenerationFailure) for r in results)
    assert "HTTP 500" in results[0].error and "HTTP 400" in results[1].error
    assert "***" in results[0].error  # the echoed header is there, its value is not
    assert SECRET not in repr(results) and SECRET[:12] not in repr(results)
    assert "retrying" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_key_stops_the_batch_at_the_first_refusal(server, status):
    """Every other prompt would be refused too: the batch ends with a clear error instead of
    sending every prompt and dead-lettering them all."""
    from slim_core.llm.openai_http import AuthenticationError

    server.reset({"p2": [status]}, latency_s=0.1)
    prompts = [f"p{n}" for n in range(40)]
    with pytest.raises(AuthenticationError, match=f"refused the API key.*HTTP {status}") as error:
        backend(server, max_concurrency=2).generate(prompts, Decoding())
    assert "SLIM_TEST_KEY" in str(error.value) and SECRET not in str(error.value)
    assert server.settled_calls() <= 6  # the first few, not all 40


def test_stop_requests_cancels_backoff_waits_and_sends_nothing_after(server):
    """What a stop signal does (the CLI calls it on SIGTERM / SIGINT): a caller blocked while
    its requests back off is released at once, and no request leaves after the stop."""
    import threading
    import time

    from slim_core.llm.openai_http import RequestsStopped

    server.reset({f"p{n}": ["429:30"] for n in range(4)})
    client = backend(server, max_backoff_s=60.0)
    outcome: list = []

    def ask() -> None:
        try:
            outcome.append(client.generate([f"p{n}" for n in range(6)], Decoding()))
        except RequestsStopped as error:
            outcome.append(error)

    thread = threading.Thread(target=ask)
    thread.start()
    calls = server.settled_calls()  # 6 first requests; 4 of them now wait 30 s to retry
    assert calls == 6
    client.stop_requests()  # what the flow's runtime does on SIGTERM / SIGINT
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], RequestsStopped)
    time.sleep(0.5)
    assert server.settled_calls() == calls
    with pytest.raises(RequestsStopped):  # a stopped backend sends nothing more
        client.generate(["p9"], Decoding())
    assert server.calls["p9"] == 0
