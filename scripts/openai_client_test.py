#!/usr/bin/env python3
"""`bimamba serve` with the official OpenAI Python client (pip install openai).

Starts the server on a free loopback port with an API key, then: a completion, a streamed chat,
a two-turn chat whose second turn must resume the first from the prefix-state cache, an unknown
model (404 through the client's error type), and SIGTERM (the server must exit 0). Any failure,
including a missing `openai` package, exits non-zero.

    python3 scripts/openai_client_test.py --bimamba target/debug/bimamba [--model DIR]
"""

import argparse
import re
import signal
import subprocess
import sys
import threading
import time

try:
    import openai
except ImportError:
    sys.exit("openai_client_test: the `openai` package is not installed (pip install openai)")

API_KEY = "ci-test-key"


def start_server(binary, model):
    cmd = [binary, "serve", "--port", "0", "--api-key", API_KEY, "--max-batch", "4"]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    found = {}

    def read():
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"on (http://[0-9.:]+)", line)
            if m and "url" not in found:
                found["url"] = m.group(1)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 300
    while "url" not in found:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            sys.exit("openai_client_test: the server did not start:\n" + "".join(lines))
        time.sleep(0.05)
    return proc, found["url"], lines


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def run(client):
    c = client.completions.create(model="default", prompt="It is a truth universally acknowledged", max_tokens=8, temperature=0)
    check(c.object == "text_completion" and len(c.choices[0].text) > 0, "completion returns text")
    check(c.usage.completion_tokens <= 8 and c.usage.prompt_tokens > 0, "completion usage counts tokens")

    history = [
        {"role": "system", "content": "A conversation about English novels."},
        {"role": "user", "content": "Tell me about the Bennet family of Longbourn."},
    ]
    stream = client.chat.completions.create(
        model="default", messages=history, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    reply = "".join(pieces)
    check(len(pieces) > 1 and reply.strip() != "", f"streamed chat arrives in {len(pieces)} pieces")
    check(finish in ("stop", "length"), f"streamed chat ends with finish_reason {finish}")
    check(usage is not None and usage.completion_tokens > 0, "streamed chat reports usage")

    first = client.chat.completions.create(model="default", messages=history, max_tokens=24, temperature=0)
    check(first.choices[0].message.content == reply, "the whole reply equals the streamed one")
    second = history + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And which daughter is the eldest?"},
    ]
    r = client.chat.completions.create(model="default", messages=second, max_tokens=16, temperature=0)
    cached = r.usage.prompt_tokens_details.cached_tokens
    print(f"second turn: {r.usage.prompt_tokens} prompt tokens, {cached} cached; first turn {first.usage.prompt_tokens}")
    check(cached > first.usage.prompt_tokens and cached < r.usage.prompt_tokens,
          "the second turn prefills only its new tokens (prefix-state cache)")

    try:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        check("gpt-4" in str(e), "an unknown model is a 404 with an OpenAI error body")
    try:
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError:
        check(True, "a wrong API key is a 401")
    models = client.models.list()
    check([m.id for m in models.data] == ["default"], "models lists the served model")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bimamba", required=True, help="the bimamba binary")
    p.add_argument("--model", help="model directory (default: the binary's default)")
    a = p.parse_args()
    proc, url, lines = start_server(a.bimamba, a.model)
    try:
        run(openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=300))
    except Exception:
        proc.kill()
        print("".join(lines), file=sys.stderr)
        raise
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit("openai_client_test: the server did not stop within 60 s of SIGTERM")
    check(code == 0, f"the server exits 0 after SIGTERM (got {code})")
    print("openai_client_test: passed")


if __name__ == "__main__":
    main()
