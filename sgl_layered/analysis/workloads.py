"""Request-length workloads generated offline from public traces' length distributions.

Numbers are inverse CDFs (quantiles 0, .01, .05, .10, ..., .95, .99, 1) of prompt and output lengths, Llama-2
tokenizer:
  * ShareGPT: the ShareGPT length trace used by Sarathi-Serve and by the layered-prefill paper
    (30,731 requests; prompt mean 2,340, output mean 439).
  * arXiv summarization: vidur's arxiv_summarization filtered trace (clipped to 4,096 total tokens, prompt mean
    2,588). The paper's arXiv workload averages 9,194 prompt tokens, so the prompt quantiles are scaled by
    9194/2588 to that mean; outputs ("short") use the trace's output quantiles capped at 512 tokens.
Everything is then scaled down by a stated factor for CPU runs; every result file records the factors.
Lengths are synthetic samples from these distributions, not the traces' requests.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import List

LEVELS = [0.0, 0.01, 0.05] + [round(0.05 * i, 2) for i in range(2, 20)] + [0.99, 1.0]

SHAREGPT_PROMPT = [1.0, 12.0, 29.0, 74.0, 180.5, 382.0, 580.0, 777.0, 973.0, 1203.0, 1457.0, 1730.0, 2060.0, 2401.0,
                   2799.0, 3235.0, 3734.5, 4278.0, 4918.0, 5696.0, 6563.0, 7433.7, 8141.0]
SHAREGPT_OUTPUT = [2.0, 6.0, 44.0, 84.0, 130.0, 181.0, 228.0, 271.0, 312.0, 346.0, 381.0, 415.0, 453.0, 493.0, 534.0,
                   581.0, 628.0, 683.0, 754.0, 834.0, 920.0, 998.0, 1024.0]
ARXIV_PROMPT_CLIPPED = [1.0, 73.0, 748.6, 1242.0, 1564.0, 1802.0, 1986.0, 2150.0, 2308.0, 2453.0, 2596.0, 2730.0,
                        2861.0, 2996.0, 3127.0, 3249.0, 3370.0, 3490.0, 3597.0, 3702.0, 3813.0, 3933.4, 4054.0]
ARXIV_OUTPUT = [5.0, 36.0, 60.0, 78.0, 92.0, 104.0, 115.0, 125.0, 135.0, 145.0, 156.0, 167.0, 179.0, 192.0, 206.0,
                222.0, 242.0, 268.0, 304.0, 372.0, 736.2, 3271.3, 4056.0]
ARXIV_PAPER_MEAN, ARXIV_TRACE_MEAN = 9194.0, 2588.1


@dataclass(frozen=True)
class Workload:
    name: str
    prompt_icdf: List[float]
    output_icdf: List[float]
    prompt_scale: float = 1.0  # multiply sampled prompt lengths (e.g. 1/8 for CPU)
    output_scale: float = 1.0
    output_cap: float = float("inf")
    note: str = ""

    def sample(self, n: int, seed: int = 0) -> List[tuple]:
        """n (prompt_len, output_len) pairs, independent draws (the traces' rank correlations are ~0)."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            p = _icdf(self.prompt_icdf, rng.random()) * self.prompt_scale
            o = min(_icdf(self.output_icdf, rng.random()), self.output_cap) * self.output_scale
            out.append((max(1, round(p)), max(1, round(o))))
        return out

    def mean_prompt(self) -> float:
        return _icdf_mean(self.prompt_icdf) * self.prompt_scale

    def describe(self) -> dict:
        return {"name": self.name, "prompt_scale": self.prompt_scale, "output_scale": self.output_scale,
                "output_cap": None if self.output_cap == float("inf") else self.output_cap,
                "mean_prompt_tokens": round(self.mean_prompt(), 1), "note": self.note, "synthetic": True}


def _icdf(points: List[float], u: float) -> float:
    i = min(bisect.bisect_right(LEVELS, u), len(LEVELS) - 1)
    lo, hi = LEVELS[i - 1], LEVELS[i]
    t = (u - lo) / (hi - lo) if hi > lo else 0.0
    return points[i - 1] + t * (points[i] - points[i - 1])


def _icdf_mean(points: List[float]) -> float:
    return sum((LEVELS[i + 1] - LEVELS[i]) * (points[i] + points[i + 1]) / 2 for i in range(len(LEVELS) - 1))


def sharegpt(prompt_scale: float = 1.0, output_scale: float = 1.0) -> Workload:
    return Workload("sharegpt-like", SHAREGPT_PROMPT, SHAREGPT_OUTPUT, prompt_scale, output_scale,
                    note="ShareGPT length distribution (Sarathi-Serve / layered-prefill paper trace), synthetic draws")


def arxiv(prompt_scale: float = 1.0, output_scale: float = 1.0) -> Workload:
    factor = ARXIV_PAPER_MEAN / ARXIV_TRACE_MEAN
    return Workload("arxiv-like", [p * factor for p in ARXIV_PROMPT_CLIPPED], ARXIV_OUTPUT, prompt_scale, output_scale,
                    output_cap=512, note="arXiv-summarization lengths (vidur trace) rescaled to the paper's 9,194-token "
                                         "prompt mean, outputs capped at 512; synthetic draws")


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> List[float]:
    """Arrival offsets in seconds of a Poisson process of `rate` requests/s (seeded, same for every mode)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out
