"""Expert-weight traffic from a trace recorded with --layered-prefill-expert-accounting.

Traffic = distinct experts touched per MoE layer per forward x bytes per expert. The prompt's share of a layer
call is what its rows add to the decode rows' experts. Per-token figures count each prompt token exactly once
(`counted_tokens`). U(n), the coverage, is the mean number of distinct experts n rows touch, per layer, from the
observed MoE calls: a description of the routing, not a bound on any mode's traffic.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from typing import Dict, Iterable, List, Tuple


def counted_tokens(piece: dict) -> int:
    """Prompt tokens a trace piece adds to a run's count: each prompt token is counted exactly once. A layered
    cohort appears in one piece per group pass, all with the same tokens; only its pass over layer 0 counts.
    A stock prefill, a chunk and a hybrid chunk each cross layer 0 once, so they count in full."""
    return int(piece["tokens"]) if piece["layers"][0] == 0 else 0


def totals(rows: Iterable[dict]) -> dict:
    loaded = prefill = tokens = 0
    bytes_per_expert = None
    for r in rows:
        acc = r.get("experts")
        if not acc:
            continue
        bytes_per_expert = acc["bytes_per_expert"]
        loaded += acc["loaded_bytes"]
        prefill += acc["prefill_bytes"]
        tokens += sum(counted_tokens(p) for p in r["prefill"])
    return {"loaded_bytes": loaded, "prefill_bytes": prefill, "prefill_tokens": tokens,
            "prefill_bytes_per_token": prefill / tokens if tokens else None, "bytes_per_expert": bytes_per_expert}


def _popcount(bits: int) -> int:
    return bin(bits).count("1")


def _cohort_of(row: dict, layer: int):
    """The prompt unit an MoE call belongs to: a layered cohort (by id), else the iteration's batch (a stock
    prefill or a chunk)."""
    for p in row["prefill"]:
        if p["layers"][0] <= layer < p["layers"][1]:
            return ("cohort", p["cohort"]) if "cohort" in p else ("batch", row["iter"])
    return None


def bounds(rows: Iterable[dict]) -> dict:
    """Expert bytes of a run, measured and bounded, from the per-call expert bitmaps of the trace (bytes):

      loaded            what the run loaded: distinct experts per MoE call, all rows;
      prompt            what the prompt rows added on top of the decode rows in the same calls (measured);
      floor             every expert any row needed, once per layer (what any schedule of this run must load);
      prompt_floor      every expert any prompt needed, once per layer: no schedule's prompt bytes go below it
                        (a prompt row's routing depends only on its prompt, so this is the same in every mode);
      one_pass_each     each request's prompt alone in one pass, no decode credit (per request, per layer, the
                        experts its own rows need);
      per_cohort        this run's cohorts (a stock batch or chunk counts as one) each loading its experts once per
                        layer, with no credit for what decode rows loaded anyway (with that credit it is `prompt`:
                        each cohort crosses a layer in one call).
    A mode's reload factor is `prompt / prompt_floor` (1.0: every expert a prompt needed loaded once per layer)."""
    loaded = prompt = 0
    b = None
    every, prompts, per_request, per_cohort = {}, {}, {}, {}
    for row in rows:
        acc = row.get("experts")
        if not acc:
            continue
        b = acc["bytes_per_expert"]
        loaded += acc["loaded_bytes"]
        prompt += acc["prefill_bytes"]
        for layer, _, prefill_rows, _, _, decode_hex, sets in acc["layers"]:
            decode = int(decode_hex, 16)
            union = 0
            for rid, hx in sets.items():
                bits = int(hx, 16)
                union |= bits
                per_request[(rid, layer)] = per_request.get((rid, layer), 0) | bits
            every[layer] = every.get(layer, 0) | union | decode
            if union:
                prompts[layer] = prompts.get(layer, 0) | union
                key = (_cohort_of(row, layer), layer)
                per_cohort[key] = per_cohort.get(key, 0) | union
    if b is None:
        return {}
    return {
        "bytes_per_expert": b, "loaded": loaded, "prompt": prompt,
        "floor": b * sum(map(_popcount, every.values())),
        "prompt_floor": b * sum(map(_popcount, prompts.values())),
        "one_pass_each": b * sum(map(_popcount, per_request.values())),
        "per_cohort": b * sum(map(_popcount, per_cohort.values())),
        "reload_factor": prompt / (b * sum(map(_popcount, prompts.values()))) if prompts else None,
    }


class Coverage:
    """U_l(n): mean distinct experts of n rows in layer l, monotone, interpolated in log n."""

    def __init__(self, observations: Dict[int, Dict[int, List[int]]]):
        self.curves: Dict[int, Tuple[List[int], List[float]]] = {}
        for layer, by_n in observations.items():
            ns = sorted(by_n)
            us, best = [], 0.0
            for n in ns:
                best = max(best, sum(by_n[n]) / len(by_n[n]))
                us.append(best)
            self.curves[layer] = (ns, us)

    @classmethod
    def from_traces(cls, traces: Iterable[Iterable[dict]]) -> "Coverage":
        obs: Dict[int, Dict[int, List[int]]] = defaultdict(lambda: defaultdict(list))
        for rows in traces:
            for r in rows:
                for layer, n, _, distinct, *_ in (r.get("experts") or {}).get("layers", []):
                    if n > 0:
                        obs[layer][n].append(distinct)
        return cls(obs)

    def max_rows(self) -> int:
        return min(ns[-1] for ns, _ in self.curves.values()) if self.curves else 0

    def at(self, layer: int, n: float) -> float:
        if n <= 0:
            return 0.0
        ns, us = self.curves[layer]
        if n <= ns[0]:
            return us[0] * n / ns[0]  # U(n) ~ linear below the smallest observation (U(0) = 0)
        if n >= ns[-1]:
            return us[-1]  # beyond the largest observation: held at the largest measured coverage
        i = bisect.bisect_left(ns, n)
        x0, x1 = math.log(ns[i - 1]), math.log(ns[i])
        t = (math.log(n) - x0) / (x1 - x0)
        return us[i - 1] + t * (us[i] - us[i - 1])

    def table(self, sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)) -> Dict[int, float]:
        """Mean over layers of U(n) at a few sizes (for reports)."""
        layers = sorted(self.curves)
        return {n: sum(self.at(l, n) for l in layers) / len(layers) for n in sizes if layers}


def per_request(rows: Iterable[dict]) -> Dict[str, dict]:
    """Per request: prefill tokens computed, expert bytes attributed to it, and the mean decode rows that ran
    alongside its prefill (prompt-attributable bytes of a piece split over its requests by token count)."""
    out: Dict[str, dict] = {}
    for r in rows:
        for p in r["prefill"]:
            share = p.get("expert_bytes", 0.0)
            tokens = p.get("req_tokens") or [p["tokens"]] * len(p["rids"])
            total = sum(tokens)
            for rid, n in zip(p["rids"], tokens):
                rec = out.setdefault(rid, {"tokens": 0, "bytes": 0.0, "decode_rows": [], "passes": 0})
                rec["bytes"] += share * n / total if total else 0.0
                rec["decode_rows"].append(r["decode_rows"])
                rec["passes"] += 1
                if counted_tokens(p):  # a request's tokens count once, on its pass over layer 0
                    rec["tokens"] += n
    for rec in out.values():
        rows_ = rec.pop("decode_rows")
        rec["mean_decode_rows"] = sum(rows_) / len(rows_)
    return out
