"""The policy a launch asks for, built from its settings (the adapter and the benchmarks share this)."""

from __future__ import annotations

from typing import Optional, Sequence

from .adaptive import AdaptivePolicy, Switches
from .config import SWITCHES, LayeredConfig
from .execution import SecondsPredictor
from .paper import PaperPolicy
from .step import Policy


def make_policy(config: LayeredConfig, hidden_size: int, dtype_bytes: int,
                predict_seconds: Optional[SecondsPredictor] = None,
                layer_costs: Optional[Sequence[float]] = None) -> Policy:
    chunk = config.layered_prefill_chunk_tokens
    if config.layered_prefill_policy == "paper":
        return PaperPolicy(groups=config.fixed_groups, tokens_per_group=config.layered_prefill_group_tokens,
                           chunk_tokens=chunk)
    on = set(config.switches)
    target = config.layered_prefill_tbt_target_ms
    return AdaptivePolicy(
        tbt_target_s=target / 1e3 if target is not None else None,
        switches=Switches(**{name: name in on for name in SWITCHES}),
        tokens_per_group=config.layered_prefill_group_tokens,
        stash_budget_bytes=config.layered_prefill_stash_budget_mb * 2 ** 20,
        stash_bytes_per_token=2 * hidden_size * dtype_bytes,  # hidden + residual per prompt row
        predict_seconds=predict_seconds, layer_costs=layer_costs, chunk_tokens=chunk)
