"""Expert-load accounting and routing overrides, through one hook on SGLang's `select_experts`.

Accounting: for each MoE layer call of each forward we record which experts the call's rows touched, as bitmaps
(bit e set: expert e): one for the decode rows and one per prompt request (prompt rows come first in every MoE
call, one run of rows per request, then the decode rows), plus the counts derived from them. Expert-weight traffic
is "distinct experts touched per layer per forward x bytes per expert"; the prompt's share of a call is what it adds
on top of the decode rows in that call. The bitmaps let the analysis compute floors that do not depend on the
schedule (every expert any prompt needed, once per layer) and what each request alone would have cost.

Records are kept per forward (a frame opened when the batch is launched, taken when its results are processed), so
under SGLang's overlap loop, which launches the next forward before processing the last one's results, every
record carries its own forward's calls.

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

import collections
import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch


@dataclass(frozen=True)
class RowLayout:
    """Whose rows a forward's MoE calls carry: the prompt requests' rows first (one run per request, in order), then
    the decode rows."""

    rids: Tuple[str, ...] = ()
    lens: Tuple[int, ...] = ()

    @property
    def prompt_rows(self) -> int:
        return sum(self.lens)


DECODE_ONLY = RowLayout()


@dataclass
class LayerCall:
    layer: int
    rows: int
    prefill_rows: int
    distinct: int
    distinct_decode: int
    decode_set: int  # bitmap of the experts the decode rows touched
    prompt_sets: Dict[str, int]  # per prompt request: bitmap of the experts its rows touched


@dataclass
class ExpertLedger:
    bytes_per_expert: int
    routing: str
    frames: collections.deque = field(default_factory=collections.deque)  # (layout, [LayerCall]) per forward
    override: Optional[RowLayout] = None  # the fused pass's layout inside the active layer group

    def open_frame(self, layout: RowLayout) -> None:
        """A forward is launched: its MoE calls are recorded under `layout` unless a layer overrides it."""
        self.frames.append((layout, []))

    @contextlib.contextmanager
    def layout(self, layout: RowLayout):
        saved, self.override = self.override, layout
        try:
            yield
        finally:
            self.override = saved

    def record(self, layer: int, topk_ids: torch.Tensor, rows: Optional[int] = None) -> None:
        if not self.frames:
            self.open_frame(DECODE_ONLY)  # a forward nothing announced (e.g. SGLang's warm-up)
        frame_layout, calls = self.frames[-1]
        layout = self.override or frame_layout
        rows = topk_ids.shape[0] if rows is None else rows
        ids = topk_ids[:rows]
        prompt = min(layout.prompt_rows, rows)
        sets, start = {}, 0
        for rid, n in zip(layout.rids, layout.lens):
            sets[rid] = sets.get(rid, 0) | _bitmap(ids[start:min(start + n, prompt)])
            start += n
        decode = _bitmap(ids[prompt:])
        union = decode
        for bits in sets.values():
            union |= bits
        calls.append(LayerCall(layer, rows, prompt, _popcount(union), _popcount(decode), decode, sets))

    def take(self) -> dict:
        """The oldest open forward's totals and per-layer calls, for its trace record."""
        calls = self.frames.popleft()[1] if self.frames else []
        b = self.bytes_per_expert
        return {
            "routing": self.routing,
            "bytes_per_expert": b,
            "loaded_bytes": sum(c.distinct for c in calls) * b,
            "prefill_bytes": sum(c.distinct - c.distinct_decode for c in calls if c.prefill_rows) * b,
            # [layer, rows, prefill rows, distinct experts, distinct experts of the decode rows,
            #  decode rows' expert bitmap (hex), {prompt request id: its rows' expert bitmap (hex)}]
            "layers": [[c.layer, c.rows, c.prefill_rows, c.distinct, c.distinct_decode, f"{c.decode_set:x}",
                        {rid: f"{bits:x}" for rid, bits in c.prompt_sets.items()}] for c in calls],
        }


def _bitmap(ids: torch.Tensor) -> int:
    ids = ids.reshape(-1)
    return sum(1 << int(e) for e in torch.unique(ids[ids >= 0]).tolist())


def _popcount(bits: int) -> int:
    return bin(bits).count("1")


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
