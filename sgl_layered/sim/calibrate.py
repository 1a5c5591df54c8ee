"""Fit a CPU hardware profile to iteration times measured by the real CPU benchmark, and report the error.

The fit uses what each trace line records: per MoE layer call its rows and the distinct experts they touched.
An iteration's predicted time is overhead + per-layer-call cost + weight_bytes / bandwidth + flops / rate,
summed over its layer calls (attention weights, the touched experts' weights, and the rows' projection/expert flops). Least squares
on a fitting set, error (median and p90 absolute relative error) reported on a held-out set.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

from sgl_layered.core.hardware import Hardware
from sgl_layered.core.shapes import ModelShape


def features(row: dict, m: ModelShape) -> Tuple[float, float, float, float]:
    """(1, layer calls, weight bytes, flops) of one traced iteration."""
    weight_bytes, flops, calls = 0.0, 0.0, 0
    for _, rows, _, distinct, *_ in row["experts"]["layers"]:
        calls += 1
        weight_bytes += m.attn_weight_bytes + distinct * m.bytes_per_expert
        flops += 2 * rows * (m.attn_weight_bytes / m.weight_bytes + m.top_k * 3 * m.hidden * m.expert_intermediate)
    return 1.0, float(calls), weight_bytes, flops


def fit(rows: Iterable[dict], m: ModelShape) -> Tuple[float, ...]:
    """Least squares weighted by 1 / measured time (between absolute and relative error: long prefill
    iterations and the many short decode ones both count)."""
    xs, ys = [], []
    for r in rows:
        if r.get("experts") and r.get("forward_end") and r["forward_end"] > r["start"]:
            xs.append(features(r, m))
            ys.append(r["forward_end"] - r["start"])
    active = list(range(len(xs[0])))
    while True:  # non-negative least squares by elimination: a negative cost coefficient is dropped
        a = [[sum(x[i] * x[j] / y for x, y in zip(xs, ys)) for j in active] for i in active]
        b = [sum(x[i] for x, y in zip(xs, ys)) for i in active]
        sol = dict(zip(active, _solve(a, b)))
        negative = [i for i in active if sol[i] < 0]
        if not negative:
            return tuple(sol.get(i, 0.0) for i in range(len(xs[0])))
        active.remove(min(negative, key=lambda i: sol[i]))


def _solve(a, b) -> List[float]:
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c and m[c][c]:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] if m[i][i] else 0.0 for i in range(n)]


def errors(rows: Iterable[dict], m: ModelShape, coef: Sequence[float]) -> dict:
    rel = []
    for r in rows:
        if r.get("experts") and r.get("forward_end"):
            measured = r["forward_end"] - r["start"]
            predicted = sum(c * x for c, x in zip(coef, features(r, m)))
            if measured > 0:
                rel.append(abs(predicted - measured) / measured)
    rel.sort()
    if not rel:
        return {"n": 0}
    return {"n": len(rel), "median_abs_rel_error": rel[len(rel) // 2], "p90_abs_rel_error": rel[int(len(rel) * 0.9)]}


def cpu_profile(coef: Sequence[float], note: str) -> Tuple[Hardware, float]:
    """(profile, per-iteration overhead seconds): launch cost per layer op = half the per-layer-call cost."""
    overhead, per_call, per_byte, per_flop = coef
    hw = Hardware("CPU-calibrated", mem_bw=1.0 / per_byte if per_byte > 0 else float("inf"),
                  flops=1.0 / per_flop if per_flop > 0 else float("inf"), launch_s=max(per_call, 0.0) / 2,
                  source=note, combine="sum")
    return hw, overhead
