"""Expert-load accounting and routing overrides, through one hook on SGLang's `select_experts`.

Accounting: for each MoE layer call of each forward we record how many rows went through it, how many of
them were prompt (prefill) rows, and how many distinct experts all rows / the decode rows alone touched.
Expert-weight traffic is "distinct experts touched per layer per forward x bytes per expert"; the prompt's
share is what it adds on top of the decode rows in the same call, (distinct(all) - distinct(decode)).

Routing overrides (off by default; every trace record says which routing ran):
  * calibrated: random-weight MoE models route degenerately, which decides expert-traffic results. This mode
    routes each token to k distinct experts drawn without replacement from a per-layer Zipf(alpha) prior over a
    seeded permutation of the experts (Gumbel top-k), the draw keyed by the token's own router logits, so it is
    deterministic and token-dependent. alpha=1.3 reproduces the coverage measured on Qwen3-30B-A3B's trained
    routers (128 experts, top-8: under 50% of experts at 16 tokens, under 70% at 64, ~86% at 128; see
    tests/test_experts.py). The paper's alpha~1.2 describes expert popularity; ours is the exponent of a
    without-replacement draw, hence the different number. Gate weights stay the router's softmax over the chosen
    experts. It changes model outputs: use it for traffic and timing benchmarks only.
  * forced-rows: row r of a call uses experts (r*k + j) mod E. Distinct counts are then known by hand
    (min(E, rows*k) for consecutive rows), which the accounting tests use.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import List, Optional

import torch

ALL = -1  # decode_tail value: every row of the call is a decode row


@dataclass
class LayerCall:
    layer: int
    rows: int
    prefill_rows: int
    distinct: int
    distinct_decode: int


@dataclass
class ExpertLedger:
    bytes_per_expert: int
    routing: str
    calls: List[LayerCall] = field(default_factory=list)
    decode_tail: int = ALL  # how many trailing rows of the current MoE call are decode rows

    @contextlib.contextmanager
    def layout(self, decode_tail: int):
        saved, self.decode_tail = self.decode_tail, decode_tail
        try:
            yield
        finally:
            self.decode_tail = saved

    def record(self, layer: int, topk_ids: torch.Tensor, rows: Optional[int] = None) -> None:
        rows = topk_ids.shape[0] if rows is None else rows
        ids = topk_ids[:rows]
        tail = rows if self.decode_tail == ALL else min(self.decode_tail, rows)
        distinct = _distinct(ids)
        distinct_decode = _distinct(ids[rows - tail:]) if tail else 0
        self.calls.append(LayerCall(layer, rows, rows - tail, distinct, distinct_decode))

    def take(self) -> dict:
        """This iteration's totals (and per-layer rows) for the trace; resets the ledger."""
        calls, self.calls = self.calls, []
        b = self.bytes_per_expert
        return {
            "routing": self.routing,
            "bytes_per_expert": b,
            "loaded_bytes": sum(c.distinct for c in calls) * b,
            "prefill_bytes": sum(c.distinct - c.distinct_decode for c in calls if c.prefill_rows) * b,
            # [layer, rows, prefill rows, distinct experts, distinct experts of the decode rows]
            "layers": [[c.layer, c.rows, c.prefill_rows, c.distinct, c.distinct_decode] for c in calls],
        }


def _distinct(ids: torch.Tensor) -> int:
    ids = ids.reshape(-1)
    return int(torch.unique(ids[ids >= 0]).numel())


# -- routing overrides --------------------------------------------------------------------------------------
class CalibratedRouting:
    def __init__(self, alpha: float, seed: int = 0):
        self.alpha = alpha
        self.seed = seed
        self._log_prior = {}

    def log_prior(self, layer: int, num_experts: int, device) -> torch.Tensor:
        key = (layer, num_experts, str(device))
        if key not in self._log_prior:
            gen = torch.Generator().manual_seed(self.seed * 100003 + layer)
            rank = torch.empty(num_experts, dtype=torch.float32)
            rank[torch.randperm(num_experts, generator=gen)] = torch.arange(num_experts, dtype=torch.float32)
            self._log_prior[key] = (-self.alpha * torch.log1p(rank)).to(device)
        return self._log_prior[key]

    def choose(self, layer: int, router_logits: torch.Tensor, k: int) -> torch.Tensor:
        logits = router_logits.float()
        num_experts = logits.shape[1]
        col = torch.arange(num_experts, device=logits.device, dtype=torch.float32)
        # A deterministic per-(token, expert) uniform from the token's router logits (a classic sin hash).
        u = torch.frac(torch.sin(logits * 12.9898 + col * 78.233 + layer * 37.719) * 43758.5453).abs()
        gumbel = -torch.log(-torch.log(u.clamp(1e-7, 1 - 1e-7)))
        return torch.topk(self.log_prior(layer, num_experts, logits.device) + gumbel, k, dim=1).indices


def forced_rows(router_logits: torch.Tensor, k: int) -> torch.Tensor:
    rows, num_experts = router_logits.shape
    r = torch.arange(rows, device=router_logits.device).unsqueeze(1)
    return (r * k + torch.arange(k, device=router_logits.device)) % num_experts


def reroute(output, router_logits: torch.Tensor, ids: torch.Tensor):
    """The SGLang top-k output with our expert ids; gate weights = router softmax over the chosen experts."""
    if not hasattr(output, "topk_ids") or not hasattr(output, "_replace"):
        raise RuntimeError(f"routing override supports SGLang's standard top-k output, got {type(output).__name__}")
    weights = torch.softmax(router_logits.float().gather(1, ids.long()), dim=1)
    return output._replace(topk_ids=ids.to(output.topk_ids.dtype), topk_weights=weights.to(output.topk_weights.dtype))


# -- the hook -----------------------------------------------------------------------------------------------
_LEDGER: Optional[ExpertLedger] = None
_ROUTING = None  # None (model), CalibratedRouting, or "forced-rows"


def configure(ledger: Optional[ExpertLedger], routing: str, alpha: float) -> None:
    global _LEDGER, _ROUTING
    _LEDGER = ledger
    _ROUTING = CalibratedRouting(alpha) if routing == "calibrated" else (
        "forced-rows" if routing == "forced-rows" else None)


def ledger() -> Optional[ExpertLedger]:
    return _LEDGER


def select_experts_hook(original, hidden_states, router_logits, topk_config, *args, layer_id=None, **kwargs):
    """AROUND hook on sglang.srt.layers.moe.topk.select_experts (installed only when accounting or a routing
    override is enabled)."""
    output = original(hidden_states, router_logits, topk_config, *args, layer_id=layer_id, **kwargs)
    if _ROUTING is not None and router_logits.shape[0] > 0:
        k = output.topk_ids.shape[1]
        if _ROUTING == "forced-rows":
            ids = forced_rows(router_logits, k)
        else:
            ids = _ROUTING.choose(layer_id or 0, router_logits, k)
        output = reroute(output, router_logits, ids)
    if _LEDGER is not None and layer_id is not None:
        non_padded = kwargs.get("num_token_non_padded")
        rows = int(non_padded) if isinstance(non_padded, torch.Tensor) else None
        _LEDGER.record(layer_id, output.topk_ids, rows)
    return output


def bytes_per_expert(model, tp_size: int) -> int:
    """Bytes of one expert's weights (gate, up and down projections) in the loaded dtype, whole model (all TP
    shards), read from the first MoE layer's real parameters."""
    for module in model.modules():
        w13, w2 = getattr(module, "w13_weight", None), getattr(module, "w2_weight", None)
        if isinstance(w13, torch.Tensor) and isinstance(w2, torch.Tensor):
            per_rank = (w13[0].numel() + w2[0].numel()) * w13.element_size()
            return per_rank * tp_size
    raise RuntimeError("expert accounting: the model has no fused-MoE expert weights")
