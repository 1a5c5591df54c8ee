"""Soak: serve a steady mixed load for N minutes with layered prefill and watch for anything lost or leaked.

Closed-loop clients (streaming and not, prompt lengths from 1 to ~1k tokens, a share of them disconnecting
mid-request) keep the server busy. Every interval the script records requests served, errors, in-flight
cohorts and the server's memory (RSS of the whole process tree). At the end it lets the server go idle,
flushes the radix cache and reports leaked KV slots and request slots (both must be 0). Results go to
`--out` as JSON; the exit status is non-zero on any error or leak.

    .venv/bin/python benchmarks/soak.py --minutes 10
    .venv/bin/python benchmarks/soak.py --minutes 1 --clients 16      # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgl_layered import cpu  # noqa: E402
from sgl_layered.models import DEFAULT_MODEL, build, get_preset  # noqa: E402
from sgl_layered.serve import ServerProcess  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from sim_report import git_state  # noqa: E402


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.served = self.errors = self.disconnected = 0
        self.error_samples = []

    def add(self, field, error=None):
        with self.lock:
            setattr(self, field, getattr(self, field) + 1)
            if error is not None and len(self.error_samples) < 20:
                self.error_samples.append(error)


def client(url, vocab, seed, stop, counters, disconnect_share):
    rng = random.Random(seed)
    while not stop.is_set():
        ids = [rng.randrange(0, vocab - 3) for _ in range(rng.choice([1, 8, 60, 250, 600, 1000]))]
        n = rng.randrange(1, 48)
        stream = rng.random() < 0.5
        disconnect = rng.random() < disconnect_share
        body = {"input_ids": ids, "stream": stream or disconnect,
                "sampling_params": {"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True}}
        try:
            with requests.post(url + "/generate", json=body, stream=stream or disconnect, timeout=600) as r:
                r.raise_for_status()
                if disconnect:  # read a little, then drop the connection (SGLang aborts the request)
                    for _ in zip(range(rng.randrange(0, 4)), r.iter_lines()):
                        pass
                    counters.add("disconnected")
                    continue
                if stream:
                    chunks = [json.loads(line[6:]) for line in r.iter_lines()
                              if line.startswith(b"data: ") and line != b"data: [DONE]"]
                    out = chunks[-1]
                else:
                    out = r.json()
                if len(out["output_ids"]) != n or out["meta_info"]["finish_reason"]["type"] != "length":
                    raise RuntimeError(f"incomplete response: {len(out['output_ids'])}/{n} tokens, "
                                       f"{out['meta_info']['finish_reason']}")
            counters.add("served")
        except Exception as e:  # every failure is counted and sampled, never hidden
            counters.add("errors", f"{type(e).__name__}: {str(e)[:300]}")


def rss_mib(pid) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2 ** 20


def pool_state(url) -> dict:
    requests.get(url + "/get_server_info", timeout=120)  # one scheduler round trip: finished work is processed
    return requests.get(url + "/get_server_info", timeout=120).json()["internal_states"][0]["sgl_layered"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-qwen3-moe", help=f"embedded model (main job uses {DEFAULT_MODEL})")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--disconnect-share", type=float, default=0.1)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--groups", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args()

    path = build(args.model)
    vocab = get_preset(args.model).vocab_size
    log = Path(args.out).with_suffix(".server.log")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(path, [*cpu.machine_server_args(), "--enable-layered-prefill", "--layered-prefill-groups",
                                  args.groups], log_path=log,
                           env={"SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1"})
    try:
        requests.post(server.url + "/generate", timeout=120, json={
            "input_ids": [5] * 32, "sampling_params": {"max_new_tokens": 4}})
        idle_rss = rss_mib(server.proc.pid)
        counters, stop = Counters(), threading.Event()
        threads = [threading.Thread(target=client, args=(server.url, vocab, i, stop, counters,
                                                         args.disconnect_share), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        samples, start = [], time.time()
        while time.time() - start < args.minutes * 60:
            time.sleep(min(args.interval, max(0.0, args.minutes * 60 - (time.time() - start))))
            if server.proc.poll() is not None:
                raise RuntimeError(f"server died (exit {server.proc.returncode}); see {log}")
            state = pool_state(server.url)
            samples.append({"t_s": round(time.time() - start, 1), "served": counters.served,
                            "errors": counters.errors, "disconnected": counters.disconnected,
                            "rss_mib": round(rss_mib(server.proc.pid), 1),
                            "cohorts_in_flight": state["cohorts_in_flight"], "waiting": state["waiting"],
                            "running": state["running"]})
            print(json.dumps(samples[-1]), flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=900)
        server.flush_cache(timeout_s=120)
        final = pool_state(server.url)
        leaked_kv = final["kv_total"] - final["kv_available"] - final["kv_evictable"]
        leaked_req = final["req_slots_total"] - final["req_slots_free"]
        report = {"model": args.model, "minutes": args.minutes, "clients": args.clients,
                  "served": counters.served, "errors": counters.errors, "disconnected": counters.disconnected,
                  "error_samples": counters.error_samples, "leaked_kv_slots": leaked_kv,
                  "leaked_request_slots": leaked_req, "sglang_leak_warnings": final["sglang_leak_warnings"],
                  "idle_rss_mib": round(idle_rss, 1), "final_rss_mib": round(rss_mib(server.proc.pid), 1),
                  "samples": samples, **git_state()}
    finally:
        server.stop()
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    print(f"wrote {args.out}")
    sys.exit(1 if report["errors"] or leaked_kv or leaked_req or report["sglang_leak_warnings"] else 0)


if __name__ == "__main__":
    main()
