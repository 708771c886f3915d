"""The official anthropic and openai SDKs, and grpcio, against Envoy and drainpipe.

Usage: dialects_client.py SCENARIO TARGET
TARGET is a base URL (http://127.0.0.1:PORT) for the SDKs, host:port for gRPC.
Prints one JSON object with what the client returned or raised.

Scenarios:
  anthropic-plain, anthropic-stream, anthropic-long-stream,
  anthropic-short-deadline   (Anthropic Messages, the anthropic SDK)
  responses-long-stream      (OpenAI Responses, the openai SDK)
  grpc-unary, grpc-short-deadline, grpc-long-stream   (grpcio, raw bytes)
"""

import json
import sys
import time

MODEL = "drainpipe-demo-1"
LONG = {"x-fake-chunks": "200", "x-fake-chunk-delay-ms": "50"}


def anthropic_scenario(scenario: str, base_url: str, out: dict) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=2, timeout=30)
    messages = [{"role": "user", "content": "hi"}]
    try:
        if scenario == "anthropic-plain":
            r = client.messages.create(model=MODEL, max_tokens=64, messages=messages)
            out["content"] = "".join(block.text for block in r.content)
        elif scenario == "anthropic-stream":
            parts = []
            for event in client.messages.create(model=MODEL, max_tokens=64, messages=messages, stream=True):
                if event.type == "content_block_delta":
                    parts.append(event.delta.text)
            out["content"] = "".join(parts)
        elif scenario == "anthropic-long-stream":
            parts = []
            stream = client.messages.create(
                model=MODEL, max_tokens=64, messages=messages, stream=True, extra_headers=LONG
            )
            try:
                for event in stream:
                    if event.type == "content_block_delta":
                        parts.append(event.delta.text)
            finally:
                out["tokens"] = len(parts)
                out["ended_unix_s"] = time.time()
        elif scenario == "anthropic-short-deadline":
            client.messages.create(
                model=MODEL,
                max_tokens=64,
                messages=messages,
                extra_headers={"x-request-timeout-ms": "100"},
            )
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
        out["ok"] = True
    except anthropic.APIStatusError as e:
        out.update(ok=False, error=type(e).__name__, api_error=True, status=e.status_code, body=e.body)
    except anthropic.APIError as e:
        out.update(ok=False, error=type(e).__name__, api_error=True, body=e.body, message=e.message)


def responses_scenario(scenario: str, base_url: str, out: dict) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=2, timeout=30)
    parts = []
    try:
        if scenario != "responses-long-stream":
            raise SystemExit(f"unknown scenario {scenario!r}")
        stream = client.responses.create(model=MODEL, input="hi", stream=True, extra_headers=LONG)
        try:
            for event in stream:
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
        finally:
            out["tokens"] = len(parts)
            out["ended_unix_s"] = time.time()
        out["ok"] = True
    except openai.APIStatusError as e:
        out.update(ok=False, error=type(e).__name__, status=e.status_code, body=e.body)
    except openai.APIError as e:
        out.update(ok=False, error=type(e).__name__, body=e.body, message=e.message)


def grpc_scenario(scenario: str, target: str, out: dict) -> None:
    import grpc

    with grpc.insecure_channel(target) as channel:
        # No serializers: messages are raw bytes (no generated code needed).
        unary = channel.unary_unary("/drainpipe.test.Echo/Unary")
        stream = channel.unary_stream("/drainpipe.test.Echo/Stream")
        try:
            if scenario == "grpc-unary":
                out["reply"] = unary(b"hello", timeout=10).decode()
            elif scenario == "grpc-short-deadline":
                grpc.channel_ready_future(channel).result(timeout=10)
                started = time.monotonic()
                try:
                    unary(b"hello", timeout=0.5)
                finally:
                    out["call_s"] = round(time.monotonic() - started, 3)
            elif scenario == "grpc-long-stream":
                parts = []
                try:
                    for message in stream(b"x", timeout=30, metadata=tuple(LONG.items())):
                        parts.append(message.decode())
                finally:
                    out["tokens"] = len(parts)
                    out["ended_unix_s"] = time.time()
            else:
                raise SystemExit(f"unknown scenario {scenario!r}")
            out["ok"] = True
        except grpc.RpcError as e:
            out.update(ok=False, code=e.code().name, details=e.details())


def main() -> None:
    scenario, target = sys.argv[1], sys.argv[2]
    started = time.monotonic()
    out = {"scenario": scenario}
    if scenario.startswith("anthropic-"):
        anthropic_scenario(scenario, target, out)
    elif scenario.startswith("responses-"):
        responses_scenario(scenario, target, out)
    elif scenario.startswith("grpc-"):
        grpc_scenario(scenario, target, out)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    out["elapsed_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
