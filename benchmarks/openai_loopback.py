"""A lean OpenAI-compatible Chat Completions server on loopback for throughput benchmarks.

Every request is answered after a fixed latency with a valid three-step completion. One asyncio
loop, kept-alive HTTP/1.1 connections, no fault injection (the tests' `tests/fake_openai.py`
does that): the threaded test server costs about as much CPU per request as the client under
test, and on 2 cores the benchmark then measured the two fighting for the CPU.

    python benchmarks/openai_loopback.py --latency 0.2     # prints its base URL, serves forever
"""

from __future__ import annotations

import argparse
import asyncio
import json

ANSWER = "Step 1: likes lab glass.\nStep 2: Glassware; Brand1.\nStep 3: Widget 9, since it fits."


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length)) if length else {}
            await asyncio.sleep(latency)
            prompt = body.get("messages", [{}])[-1].get("content", "")
            reply = json.dumps(
                {
                    "id": "bench",
                    "object": "chat.completion",
                    "model": body.get("model", "bench"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWER},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 20},
                }
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(latency: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, latency), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds before each reply")
    asyncio.run(serve(parser.parse_args().latency))
