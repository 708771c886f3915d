"""Streams chat completions with the official OpenAI SDK while the server
behind BASE_URL goes away, and says what became of every stream.

Usage: llm_drain_client.py BASE_URL MODEL [options]

  --streams N        streams opened one after another, 0.2 s apart (default 8)
  --long N           the last N of them ask for --long-tokens (default 2)
  --tokens N         max_tokens of the short streams (default 48)
  --long-tokens N    max_tokens of the long ones, end of text suppressed (default 2000)
  --drain-url URL    once the first stream has its first token: POST here (a drain)
  --kill-pid PID     once the first stream has its first token: SIGTERM this
                     process, and SIGKILL it --kill-after seconds later if it
                     is still running (as Kubernetes does at the end of the
                     termination grace period)
  --kill-after S     (default 15)
  --late N           requests sent ADMIT_S + 0.5 s after the drain started (default 4)
  --admit-s S        the admit window, seconds (default 2)

A server that runs one completion at a time (llama.cpp's through
llama-cpp-python) queues the others: they are in flight, waiting.

The SDK does not retry (max_retries=0): every outcome is what the server
gave. Prints one JSON object: each stream's outcome and token count, each
late request's, and the counts by outcome:

  whole        the stream ended with a finish_reason
  final_event  the SDK raised APIError carrying drainpipe's final event
  rejected     503 with the drain contract (code service_draining)
  cut          the stream broke off (connection reset, or ended without a
               finish_reason), or the connection was refused
  error        anything else
"""

import argparse
import json
import os
import signal
import threading
import time
import urllib.request

import openai

# Gemma's end-of-text tokens (<eos>, <end_of_turn>), suppressed in the long
# streams so they run until max_tokens.
NO_END = {"1": -100, "106": -100}


def classify(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        code = (body.get("error") or body).get("code") if isinstance(body, dict) else None
        return "rejected" if exc.status_code == 503 and code == "service_draining" else "error"
    if isinstance(exc, openai.APIConnectionError):
        return "cut"
    if isinstance(exc, openai.APIError):
        body = exc.body if isinstance(exc.body, dict) else {}
        code = body.get("code") or (body.get("error") or {}).get("code")
        return "final_event" if code in ("service_draining", "deadline_exceeded") else "error"
    return "cut"


def stream(client, model, max_tokens, long, first, out):
    tokens, reason = 0, None
    extra = {"logit_bias": NO_END} if long else {}
    try:
        s = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell a long story about a lighthouse."}],
            max_tokens=max_tokens,
            stream=True,
            extra_body=extra,
        )
        for chunk in s:
            if chunk.choices:
                if chunk.choices[0].delta.content:
                    tokens += 1
                    first.set()
                reason = chunk.choices[0].finish_reason or reason
        out.update(outcome="whole" if reason else "cut", tokens=tokens, finish_reason=reason)
    except Exception as e:  # every failure is an outcome to count
        out.update(outcome=classify(e), tokens=tokens, error=type(e).__name__, message=str(e)[:200])
    finally:
        first.set()


def one_request(client, model, out):
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        out.update(outcome="whole")
    except Exception as e:
        out.update(outcome=classify(e), error=type(e).__name__, message=str(e)[:200])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("model")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--long", type=int, default=2)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--long-tokens", type=int, default=2000)
    p.add_argument("--drain-url")
    p.add_argument("--kill-pid", type=int)
    p.add_argument("--kill-after", type=float, default=15.0)
    p.add_argument("--late", type=int, default=4)
    p.add_argument("--admit-s", type=float, default=2.0)
    a = p.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=120)

    started = time.monotonic()
    streams = [{"long": i >= a.streams - a.long} for i in range(a.streams)]
    firsts = [threading.Event() for _ in streams]
    threads = [
        threading.Thread(
            target=stream,
            args=(client, a.model, a.long_tokens if s["long"] else a.tokens, s["long"], f, s),
        )
        for s, f in zip(streams, firsts)
    ]

    def open_all():
        for t in threads:
            t.start()
            time.sleep(0.2)

    opener = threading.Thread(target=open_all)
    opener.start()
    firsts[0].wait(300)
    time.sleep(0.3)
    event_s = round(time.monotonic() - started, 3)
    late = []
    if a.drain_url:
        req = urllib.request.Request(a.drain_url, method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        time.sleep(a.admit_s + 0.5)
        for _ in range(a.late):
            out = {}
            one_request(client, a.model, out)
            late.append(out)
    elif a.kill_pid:
        os.kill(a.kill_pid, signal.SIGTERM)

        def kill_later():
            deadline = time.monotonic() + a.kill_after
            while time.monotonic() < deadline:
                try:
                    os.kill(a.kill_pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)
            try:
                os.kill(a.kill_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        threading.Thread(target=kill_later, daemon=True).start()
    opener.join()
    for t in threads:
        t.join(600)
    counts = {}
    for s in streams:
        counts[s.get("outcome", "error")] = counts.get(s.get("outcome", "error"), 0) + 1
    late_counts = {}
    for r in late:
        late_counts[r["outcome"]] = late_counts.get(r["outcome"], 0) + 1
    print(
        json.dumps(
            {
                "event_after_s": event_s,
                "elapsed_s": round(time.monotonic() - started, 3),
                "streams": streams,
                "counts": counts,
                "late": late,
                "late_counts": late_counts,
            }
        )
    )


if __name__ == "__main__":
    main()
