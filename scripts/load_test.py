#!/usr/bin/env python3
"""Bounded load test of `bimamba serve` on loopback (Python standard library only).

Starts its own servers on free loopback ports, stops them with SIGTERM, and writes one JSON and
one Markdown file. Four parts, one run:

1. load:    32 concurrent clients x 20 streamed completions each on the default model; errors,
            p50/p99 time to first token, aggregate generated tokens/s, server RSS before/after.
2. scaling: aggregate decode tokens/s of 8 concurrent streams against 1 stream, on the default
            model and on a random 1-bit model of the 2.7B shape (`serve --shape 2.7b`).
3. cache:   time to first token of a second chat turn after a ~1,000-token history, with the
            prefix-state cache against a server without it (--state-cache-mb 0).

    python3 scripts/load_test.py --bimamba target/release/bimamba --out results/serve-load
"""

import argparse
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

TINY_TOKENIZER = "fixtures/tiny-austen/tokenizer.json"


class Server:
    """A `bimamba serve` process on a free loopback port."""

    def __init__(self, binary, args, threads):
        cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--threads", str(threads)] + args
        self.cmd = " ".join(cmd)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.port = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 600
        while self.port is None:
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                sys.exit("load_test: the server did not start:\n" + "".join(self.lines))
            time.sleep(0.05)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def metric(self, name):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed after 120 s"
        return code


def stream(port, path, body):
    """One streamed request: (time to first token, the clock time each token arrived, usage, error)."""
    t0 = time.perf_counter()
    body = dict(body, stream=True, stream_options={"include_usage": True})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return None, [], None, f"HTTP {resp.status}: {resp.read()[:200]!r}"
        arrivals, usage, done = [], None, False
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return None, [], None, chunk["error"]["message"]
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                # A token chunk: text (completions), content or per-token logprobs (chat).
                has_token = c.get("text") or (c.get("delta") or {}).get("content") or c.get("logprobs")
                if has_token and not c.get("finish_reason"):
                    arrivals.append(time.perf_counter())
        conn.close()
        if not done:
            return None, [], None, "the stream ended without [DONE]"
        return (arrivals[0] - t0 if arrivals else None), arrivals, usage, None
    except Exception as e:  # noqa: BLE001 - every failure counts as an error of the test
        return None, [], None, repr(e)


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def load_part(binary, threads, clients, per_client, cache_mb):
    srv = Server(binary, ["--max-batch", "32", "--max-queue", "256", "--state-cache-mb", str(cache_mb)], threads)
    try:
        warm = stream(srv.port, "/v1/completions", {"prompt": "Warm up.", "max_tokens": 4})
        if warm[3]:
            sys.exit(f"load_test: warm-up failed: {warm[3]}")
        rss_before = srv.rss_mib()
        results = []
        lock = threading.Lock()

        def client(i):
            for k in range(per_client):
                body = {
                    "prompt": f"Chapter {i * per_client + k}. It was a fine morning in the country, and",
                    "max_tokens": 32, "temperature": 0.8, "top_k": 40, "seed": i * 1000 + k,
                }
                r = stream(srv.port, "/v1/completions", body)
                with lock:
                    results.append(r)

        t0 = time.perf_counter()
        workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        time.sleep(1)  # RSS once the server is idle again
        rss_after = srv.rss_mib()
        # A second, shorter pass: memory that is only the allocator's high-water mark stays
        # level, a leak keeps growing.
        second = []
        for_second = [threading.Thread(target=lambda i=i: second.append(stream(
            srv.port, "/v1/completions", {"prompt": f"Again {i}. The carriage", "max_tokens": 32, "temperature": 0.8,
                                          "top_k": 40, "seed": i}))) for i in range(clients * 5)]
        for w in for_second:
            w.start()
        for w in for_second:
            w.join()
        time.sleep(1)
        rss_second = srv.rss_mib()
        cache_bytes = srv.metric("bimamba_prefix_cache_bytes")
        errors = [r[3] for r in results if r[3]]
        ttft = [r[0] for r in results if r[0] is not None]
        tokens = sum(r[2]["completion_tokens"] for r in results if r[2])
        return {
            "command": srv.cmd,
            "clients": clients, "requests_per_client": per_client, "requests": len(results),
            "errors": len(errors), "first_errors": errors[:5],
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "generated_tokens": tokens, "wall_s": wall, "aggregate_tokens_per_s": tokens / wall,
            "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "rss_growth_mib": rss_after - rss_before,
            "rss_after_second_pass_mib": rss_second, "second_pass_requests": len(second),
            "second_pass_errors": sum(1 for r in second if r[3]),
            "state_cache_budget_mib": cache_mb, "state_cache_bytes_at_end": cache_bytes,
        }
    finally:
        srv.stop()


def decode_rate(port, streams, max_tokens, prompt):
    """Aggregate decode tokens/s of `streams` concurrent greedy streams of `max_tokens` tokens."""
    out = [None] * streams

    def one(i):
        # logprobs: every token sends a chunk, even one whose text is held back (an incomplete
        # UTF-8 character), so that each token's arrival is seen.
        body = {"prompt": f"{prompt} ({i})", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "logprobs": 0}
        out[i] = stream(port, "/v1/completions", body)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    errors = [r[3] for r in out if r[3]]
    if errors:
        sys.exit(f"load_test: decode-rate stream failed: {errors[0]}")
    # The window in which every stream is decoding: from the last stream's first token to the
    # first stream's last token (the other streams' prefills fall outside it).
    start = max(r[1][0] for r in out)
    end = min(r[1][-1] for r in out)
    if end <= start:
        sys.exit(f"load_test: the {streams} streams never decoded together (give them more tokens)")
    decoded = sum(sum(1 for t in r[1] if start < t <= end) for r in out)
    return decoded / (end - start)


def scaling_part(binary, threads, label, args, max_tokens, prompt):
    srv = Server(binary, ["--max-batch", "8"] + args, threads)
    try:
        decode_rate(srv.port, 1, 4, prompt)  # warm-up
        one = decode_rate(srv.port, 1, max_tokens, prompt)
        eight = decode_rate(srv.port, 8, max_tokens, prompt)
        print(f"{label}: 1 stream {one:.1f} tok/s, 8 streams {eight:.1f} tok/s", flush=True)
        return {"model": label, "command": srv.cmd, "tokens_per_stream": max_tokens,
                "one_stream_tok_s": one, "eight_streams_tok_s": eight, "speedup": eight / one}
    finally:
        srv.stop()


def history_messages(target_tokens_words):
    """A conversation of about `target_tokens_words` words (~1,000 tokens) and a reply turn."""
    text = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
            "must be in want of a wife. However little known the feelings or views of such a man may be "
            "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
            "surrounding families, that he is considered the rightful property of some one or other of "
            "their daughters. ")
    words = text.split()
    msgs = [{"role": "system", "content": "A conversation about English novels."}]
    n = 0
    turn = 0
    while n < target_tokens_words:
        chunk = " ".join(words[(turn * 37) % len(words):] + words[:(turn * 37) % len(words)])
        msgs.append({"role": "user", "content": f"Part {turn}: {chunk}"})
        msgs.append({"role": "assistant", "content": f"I see, part {turn} is about fortune and families."})
        n += len(chunk.split()) + 12
        turn += 1
    msgs.append({"role": "user", "content": "What does the narrator say about wealthy single men?"})
    return msgs


def chat_ttft(port, messages):
    body = {"messages": messages, "max_tokens": 16, "temperature": 0, "logprobs": True}
    ttft, _, usage, err = stream(port, "/v1/chat/completions", body)
    if err:
        sys.exit(f"load_test: chat request failed: {err}")
    return ttft, usage


def cache_part(binary, threads, repeats):
    history = history_messages(700)
    out = {}
    for label, cache_mb in (("cached", 512), ("uncached", 0)):
        srv = Server(binary, ["--state-cache-mb", str(cache_mb)], threads)
        try:
            ttfts, usages = [], []
            for r in range(repeats):
                # A fresh first turn each time (its own question), then the second turn.
                first = history[:-1] + [{"role": "user", "content": f"Question {r}: {history[-1]['content']}"}]
                _, u1 = chat_ttft(srv.port, first)
                body = {"messages": first, "max_tokens": 16, "temperature": 0}
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
                conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
                reply = json.loads(conn.getresponse().read())["choices"][0]["message"]["content"]
                conn.close()
                second = first + [{"role": "assistant", "content": reply},
                                  {"role": "user", "content": "And what do the neighbours think of him?"}]
                t, u2 = chat_ttft(srv.port, second)
                ttfts.append(t)
                usages.append(u2)
            out[label] = {"command": srv.cmd, "ttft_s": ttfts, "ttft_median_s": statistics.median(ttfts),
                          "prompt_tokens": usages[-1]["prompt_tokens"],
                          "cached_tokens": [u["prompt_tokens_details"]["cached_tokens"] for u in usages]}
        finally:
            srv.stop()
    out["ratio_cached_over_uncached"] = out["cached"]["ttft_median_s"] / out["uncached"]["ttft_median_s"]
    return out


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def write_md(path, r):
    L = r["load"]
    lines = [
        "# `bimamba serve` load test",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores (load average at start "
        f"{r['machine']['loadavg_at_start']}), server threads {r['threads']}, commit {r['commit']}.",
        "",
        "## Load",
        "",
        f"{L['clients']} concurrent clients x {L['requests_per_client']} streamed completions (32 tokens, "
        f"T = 0.8, top-k 40): {L['requests']} requests, **{L['errors']} errors**.",
        "",
        "| p50 TTFT | p99 TTFT | aggregate tokens/s | RSS before | RSS after | state cache budget |",
        "|---|---|---|---|---|---|",
        f"| {L['ttft_p50_s'] * 1000:.0f} ms | {L['ttft_p99_s'] * 1000:.0f} ms | {L['aggregate_tokens_per_s']:.1f} | "
        f"{L['rss_before_mib']:.0f} MiB | {L['rss_after_mib']:.0f} MiB | {L['state_cache_budget_mib']} MiB |",
        "",
        f"RSS after a second pass of {L['second_pass_requests']} requests ({L['second_pass_errors']} errors): "
        f"{L['rss_after_second_pass_mib']:.0f} MiB. RSS is read 1 s after each pass, once the server is idle; "
        "the second pass shows whether it keeps growing.",
        "",
        "## Batched decode: 8 concurrent streams against 1",
        "",
        "Greedy streams with `ignore_eos`; aggregate decode tokens/s over the window in which every stream "
        "is decoding (prefills outside it).",
        "",
        "| model | 1 stream tok/s | 8 streams tok/s (aggregate) | speedup | target |",
        "|---|---|---|---|---|",
    ]
    for s, target in zip(r["scaling"], ("3x", "2x", "2x")):
        lines.append(f"| {s['model']} | {s['one_stream_tok_s']:.1f} | {s['eight_streams_tok_s']:.1f} | "
                     f"{s['speedup']:.2f}x | {target} |")
    c = r["cache"]
    lines += [
        "",
        "## Second chat turn after a long history",
        "",
        f"Prompt of the second turn: {c['cached']['prompt_tokens']} tokens; from the cache: "
        f"{c['cached']['cached_tokens']} (with the cache), {c['uncached']['cached_tokens']} (without).",
        "",
        "| | median TTFT | runs |",
        "|---|---|---|",
        f"| with the prefix-state cache | {c['cached']['ttft_median_s'] * 1000:.1f} ms | "
        f"{', '.join(f'{t * 1000:.1f}' for t in c['cached']['ttft_s'])} |",
        f"| --state-cache-mb 0 | {c['uncached']['ttft_median_s'] * 1000:.1f} ms | "
        f"{', '.join(f'{t * 1000:.1f}' for t in c['uncached']['ttft_s'])} |",
        "",
        f"Ratio cached / uncached: {c['ratio_cached_over_uncached']:.3f} (target <= 0.2).",
        "",
        "Server commands: " + "; ".join(f"`{x}`" for x in [L["command"]] + [s["command"] for s in r["scaling"]]
                                        + [c["cached"]["command"], c["uncached"]["command"]]),
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bimamba", default="target/release/bimamba")
    p.add_argument("--out", default="results/serve-load", help="writes OUT.json and OUT.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--cache-mb", type=int, default=64, help="state cache budget of the load part")
    p.add_argument("--skip-2.7b", dest="skip_big", action="store_true", help="leave out the 2.7B-shape scaling")
    a = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    r = {"command": "python3 " + " ".join(sys.argv), "commit": commit, "threads": a.threads, "machine": machine()}
    print("load part ...", flush=True)
    r["load"] = load_part(a.bimamba, a.threads, a.clients, a.requests, a.cache_mb)
    print(json.dumps(r["load"], indent=1), flush=True)
    print("scaling part ...", flush=True)
    prompt = "The history of the county begins with"
    r["scaling"] = [scaling_part(a.bimamba, a.threads, "models/default (19.5 M, 1-bit)", [], 128, prompt)]
    if not a.skip_big:
        big = ["--shape", "2.7b", "--tokenizer", TINY_TOKENIZER]
        r["scaling"].append(scaling_part(a.bimamba, a.threads, "random 1-bit, 2.7B shape", big, 40, prompt))
        r["scaling"].append(scaling_part(a.bimamba, a.threads, "random 1-bit, 2.7B shape, --state-dtype bf16",
                                         big + ["--state-dtype", "bf16"], 40, prompt))
    print(json.dumps(r["scaling"], indent=1), flush=True)
    print("cache part ...", flush=True)
    r["cache"] = cache_part(a.bimamba, a.threads, 3)
    print(json.dumps(r["cache"], indent=1), flush=True)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    write_md(a.out + ".md", r)
    print(f"wrote {a.out}.json and {a.out}.md")
    if r["load"]["errors"]:
        sys.exit(f"load_test: {r['load']['errors']} failed requests")


if __name__ == "__main__":
    main()
