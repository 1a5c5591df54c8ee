"""Per-iteration time of a batch (decode rows + prefill pieces over layer ranges) on a hardware profile.

Per layer, attention and MoE each cost max(bytes / bandwidth, flops / rate) plus a fixed launch overhead:
  attention bytes: QKV/O weights + the KV each row reads; flops: projections + scores (prefill: causal over its
    own tokens and any cached prefix; decode: over its context);
  MoE bytes: distinct experts touched x bytes per expert (+ shared experts); flops: 2 * rows * k * 3 * H * I;
  dense FFN layers: their weights once, 2 * rows * 3 * H * I flops.
Tensor parallelism divides weights, KV and flops by TP and adds two all-reduces per layer. Each iteration also
reports the HBM bytes and FLOPs it modelled, summed over the TP ranks (the energy model's inputs; all-reduce
traffic and the per-iteration overhead's work, e.g. embedding and LM head, are not in them). The number of
distinct experts n rows touch is the exact expectation U(n) = sum_e 1 - (1 - pi_e)^n, with pi_e each expert's
inclusion probability: k/E for uniform routing, or from a Zipf(alpha) prior drawn without replacement
(Plackett-Luce, as the calibrated routing of the CPU benchmarks does), estimated once by Monte Carlo.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from sgl_layered.core.execution import PromptWork

from .hardware import Hardware
from .shapes import ModelShape


@functools.lru_cache(maxsize=64)
def inclusion_probabilities(experts: int, k: int, alpha: Optional[float], samples: int = 4000,
                            seed: int = 0) -> Tuple[float, ...]:
    if not alpha:
        return tuple([k / experts] * experts)
    rng = random.Random(seed)
    logw = [-alpha * math.log(r + 1) for r in range(experts)]
    counts = [0] * experts
    for _ in range(samples):
        keys = [lw - math.log(-math.log(rng.random() or 1e-12)) for lw in logw]  # Gumbel top-k
        for e in sorted(range(experts), key=keys.__getitem__, reverse=True)[:k]:
            counts[e] += 1
    return tuple(c / samples for c in counts)


@functools.lru_cache(maxsize=200000)
def coverage(experts: int, k: int, alpha: Optional[float], rows: int) -> float:
    """U(rows): expected distinct experts `rows` tokens touch."""
    if rows <= 0 or experts == 0:
        return 0.0
    return sum(1.0 - (1.0 - p) ** rows for p in inclusion_probabilities(experts, k, alpha))




@dataclass(frozen=True)
class IterationCost:
    seconds: float
    expert_bytes: float  # distinct experts x bytes per expert, all layers
    prefill_expert_bytes: float  # what prefill rows add over the decode rows alone
    hbm_bytes: float = 0.0  # every modelled HBM byte (weights, KV, experts), all TP ranks together
    flops: float = 0.0  # every modelled FLOP, all TP ranks together


class CostModel:
    def __init__(self, model: ModelShape, hw: Hardware, tp: int = 1, alpha: Optional[float] = None,
                 overhead_s: float = 0.0):
        self.m, self.hw, self.tp, self.alpha = model, hw, tp, alpha
        self.overhead_s = overhead_s  # per iteration: scheduling, sampling, embedding/LM head

    def _op(self, bytes_: float, flops: float) -> float:
        t_mem, t_flop = bytes_ / self.hw.mem_bw, flops / self.hw.flops
        return (t_mem + t_flop if self.hw.combine == "sum" else max(t_mem, t_flop)) + self.hw.launch_s

    def _distinct(self, rows: int) -> float:
        return coverage(self.m.experts, self.m.top_k, self.alpha, rows)

    def iteration(self, decode_contexts: Sequence[int], pieces: Sequence[PromptWork]) -> IterationCost:
        return self.iteration_totals(len(decode_contexts), sum(decode_contexts), pieces)

    def seconds(self, decode_rows: int, decode_context: int, pieces: Sequence[PromptWork]) -> float:
        """The policy's SecondsPredictor (core/execution.py)."""
        return self.iteration_totals(decode_rows, decode_context, pieces).seconds

    def iteration_totals(self, b: int, decode_kv: int, pieces: Sequence[PromptWork]) -> IterationCost:
        m = self.m
        # Layers between these boundaries are identical work: cost one and multiply.
        cuts = sorted({0, m.layers, min(m.dense_layers, m.layers)}
                      | {x for p in pieces for x in p.layers if 0 <= x <= m.layers})
        seconds = self.overhead_s
        expert_bytes = prefill_expert_bytes = hbm_bytes = flops = 0.0
        for lo, hi in zip(cuts, cuts[1:]):
            if hi <= lo:
                continue
            active = tuple(p for p in pieces if p.layers[0] <= lo < p.layers[1])
            s, eb, peb, hb, fl = self._layer(lo, b, decode_kv, active)
            seconds += s * (hi - lo)
            expert_bytes += eb * (hi - lo)
            prefill_expert_bytes += peb * (hi - lo)
            hbm_bytes += hb * (hi - lo)
            flops += fl * (hi - lo)
        return IterationCost(seconds, expert_bytes, prefill_expert_bytes, hbm_bytes, flops)

    def _layer(self, layer: int, b: int, decode_kv: int, active: Tuple[PromptWork, ...]):
        m, tp = self.m, self.tp
        rows = b + sum(p.tokens for p in active)
        if rows == 0:
            return 0.0, 0.0, 0.0, 0.0, 0.0
        qh = m.q_heads * m.head_dim
        kv_rows = decode_kv + sum(p.prefix + p.tokens for p in active)
        attn_bytes = (m.attn_weight_bytes + kv_rows * m.kv_bytes) / tp
        attn_flops = (2 * rows * m.attn_weight_bytes / m.weight_bytes
                      + 4 * qh * (decode_kv + sum(p.tokens * (p.prefix + p.tokens / 2) for p in active))) / tp
        seconds = self._op(attn_bytes, attn_flops)
        expert_bytes = prefill_expert_bytes = 0.0
        if m.is_moe_layer(layer):
            distinct = self._distinct(rows)
            ffn_bytes = distinct * m.bytes_per_expert / tp
            ffn_flops = 2 * rows * m.top_k * 3 * m.hidden * m.expert_intermediate / tp
            if m.shared_experts:
                shared = 3 * m.hidden * m.shared_intermediate * m.shared_experts
                ffn_bytes += shared * m.weight_bytes / tp
                ffn_flops += 2 * rows * shared / tp
            expert_bytes = distinct * m.bytes_per_expert
            if active:
                prefill_expert_bytes = (distinct - self._distinct(b)) * m.bytes_per_expert
        else:
            dense = 3 * m.hidden * m.dense_intermediate
            ffn_bytes, ffn_flops = dense * m.weight_bytes / tp, 2 * rows * dense / tp
        seconds += self._op(ffn_bytes, ffn_flops)
        if tp > 1:
            msg = rows * m.hidden * m.weight_bytes * 2 * (tp - 1) / tp
            seconds += 2 * (msg / self.hw.interconnect_bw + self.hw.launch_s)
        # Per-rank bytes and flops times TP: the whole machine's (weights and KV are split, not copied).
        return (seconds, expert_bytes, prefill_expert_bytes, (attn_bytes + ffn_bytes) * tp,
                (attn_flops + ffn_flops) * tp)

    def layer_costs(self, rows: int) -> List[float]:
        """Relative cost of each layer for `rows` prefill rows (used to split groups by cost, not count)."""
        return [self.iteration([], [PromptWork(rows, 0, (l, l + 1))]).seconds - self.overhead_s
                for l in range(self.m.layers)]
