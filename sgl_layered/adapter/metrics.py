"""Prometheus counters for expert-load accounting (with SGLang's --enable-metrics).

They live in the scheduler process; SGLang serves every process's metrics on /metrics (multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter


class ExpertCounters:
    def __init__(self):
        self.loaded = Counter("sglang_layered_expert_loaded_bytes",
                              "Expert-weight bytes the MoE layers touched (distinct experts per layer per forward "
                              "x bytes per expert)")
        self.prefill = Counter("sglang_layered_expert_prefill_bytes",
                               "Expert-weight bytes attributable to prompt (prefill) rows")
        self.tokens = Counter("sglang_layered_prefill_tokens", "Prompt tokens prefilled, each counted once (a layered "
                                                        "cohort on its pass over layer 0)")

    def add(self, accounted: dict, prefill_tokens: int) -> None:
        self.loaded.inc(accounted["loaded_bytes"])
        self.prefill.inc(accounted["prefill_bytes"])
        self.tokens.inc(prefill_tokens)
