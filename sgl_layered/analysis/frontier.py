"""TTFT against the token-gap tail, per family of settings, and one family's TTFT at another's tail.

The question users ask is "at the same token-gap tail, how much sooner is my first token?". A *family* is one
knob swept over settings (mixed-chunk prefill's chunk size; layered prefill's tokens per group). Each run of a
setting gives a point (token-gap p99, TTFT p50). A family's frontier keeps the points no other point of the
family beats on both; between two frontier points the family is taken to trade linearly (a chunk size between
the two would land near that line; no claim is made outside the family's measured range). The matched ratio of
a run is its TTFT p50 over the base family's frontier TTFT at the run's own gap p99: below 1, the run gives
first tokens sooner than the base family can at that tail.

Uncertainty: a bootstrap over requests. Each draw resamples every run's requests with replacement (its gaps go
with it), recomputes every point, the base frontier and the ratio; the interval is the 2.5th-97.5th percentile
of the draws. Draws whose gap tail falls outside the base family's range count as unmatched and are reported.
Pure Python (no numpy) so the analysis runs wherever the saved records are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .latency import RequestRecord, percentile


@dataclass(frozen=True)
class Point:
    setting: str
    gap_p99: float
    ttft_p50: float


def point(setting: str, records: Sequence[RequestRecord]) -> Optional[Point]:
    ok = [r for r in records if r.success]
    gaps = [g for r in ok for g in r.gaps]
    if not ok or not gaps:
        return None
    return Point(setting, percentile(gaps, 99), percentile([r.ttft for r in ok], 50))


def pareto(points: Sequence[Point]) -> List[Point]:
    """The points no other point beats on both axes, by increasing gap tail (so decreasing TTFT)."""
    out: List[Point] = []
    for p in sorted(points, key=lambda p: (p.gap_p99, p.ttft_p50)):
        if not out or p.ttft_p50 < out[-1].ttft_p50:
            out.append(p)
    return out


def ttft_at(frontier: Sequence[Point], gap_p99: float) -> Optional[float]:
    """The frontier's TTFT at this gap tail: linear between neighbours; None outside the measured range. Left of
    the first point the family cannot reach that tail; right of the last it would not be measured."""
    if not frontier or gap_p99 < frontier[0].gap_p99 or gap_p99 > frontier[-1].gap_p99:
        return None
    for a, b in zip(frontier, frontier[1:]):
        if a.gap_p99 <= gap_p99 <= b.gap_p99:
            if b.gap_p99 == a.gap_p99:
                return min(a.ttft_p50, b.ttft_p50)
            w = (gap_p99 - a.gap_p99) / (b.gap_p99 - a.gap_p99)
            return a.ttft_p50 + w * (b.ttft_p50 - a.ttft_p50)
    return frontier[0].ttft_p50  # a one-point frontier, hit exactly


def matched_ratio(run: Sequence[RequestRecord], base: Dict[str, Sequence[RequestRecord]]) -> Optional[float]:
    p = point("run", run)
    front = pareto([q for q in (point(s, recs) for s, recs in base.items()) if q is not None])
    ref = ttft_at(front, p.gap_p99) if p else None
    return p.ttft_p50 / ref if ref else None


@dataclass(frozen=True)
class MatchedRatio:
    ratio: Optional[float]  # on the records as measured
    low: Optional[float]  # 95% bootstrap interval
    high: Optional[float]
    matched_draws: float  # fraction of draws whose gap tail fell inside the base family's range
    draws: int

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "ci95": [self.low, self.high], "matched_draws": self.matched_draws,
                "draws": self.draws}


def _resample(records: Sequence[RequestRecord], rng: random.Random) -> List[RequestRecord]:
    return [records[rng.randrange(len(records))] for _ in records]


def bootstrap_matched_ratio(run: Sequence[RequestRecord], base: Dict[str, Sequence[RequestRecord]],
                            draws: int = 1000, seed: int = 0) -> MatchedRatio:
    rng = random.Random(seed)
    values: List[float] = []
    for _ in range(draws):
        r = matched_ratio(_resample(run, rng), {s: _resample(recs, rng) for s, recs in base.items()})
        if r is not None:
            values.append(r)
    values.sort()
    low = percentile(values, 2.5) if len(values) >= 40 else None  # too few matched draws: no interval
    high = percentile(values, 97.5) if len(values) >= 40 else None
    return MatchedRatio(matched_ratio(run, base), low, high, len(values) / draws if draws else 0.0, draws)


def paired_ratio_ci(pairs: Sequence[Tuple[float, float]], draws: int = 2000, seed: int = 0) -> dict:
    """Repetitions of two modes run on the same seeds: the ratio of their medians and a bootstrap interval over
    repetitions (each draw resamples whole pairs, keeping the pairing)."""
    rng = random.Random(seed)

    def ratio(ps):
        a = percentile([x for x, _ in ps], 50)
        b = percentile([y for _, y in ps], 50)
        return a / b if b else None

    values = sorted(v for v in (ratio([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(draws))
                    if v is not None)
    return {"ratio": ratio(list(pairs)), "ci95": [percentile(values, 2.5), percentile(values, 97.5)],
            "pairs": len(pairs), "wins": sum(1 for x, y in pairs if x < y)}
