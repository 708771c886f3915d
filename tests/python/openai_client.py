"""The official OpenAI Python SDK against Envoy and drainpipe.

Usage: openai_client.py SCENARIO BASE_URL
Prints one JSON object with what the SDK returned or raised.
"""

import json
import sys
import time

import openai

MODEL = "drainpipe-demo-1"
MESSAGES = [{"role": "user", "content": "hi"}]


def main() -> None:
    scenario, base_url = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=2, timeout=30)
    started = time.monotonic()
    out = {"scenario": scenario}
    try:
        if scenario == "plain":
            r = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            out["content"] = r.choices[0].message.content
        elif scenario == "stream":
            parts = []
            for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            out["content"] = "".join(parts)
        elif scenario == "long-stream":
            parts = []
            stream = client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                extra_headers={"x-fake-chunks": "200", "x-fake-chunk-delay-ms": "50"},
            )
            try:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
            finally:
                out["tokens"] = len(parts)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
        out["ok"] = True
    except openai.APIStatusError as e:
        out.update(ok=False, error=type(e).__name__, status=e.status_code, body=e.body)
    except openai.APIError as e:
        out.update(ok=False, error=type(e).__name__, body=e.body, message=e.message)
    out["elapsed_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
