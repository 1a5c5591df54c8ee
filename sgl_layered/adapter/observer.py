"""What the scheduler records per iteration: the trace, expert-load accounting, Prometheus counters."""

from __future__ import annotations

import logging
from typing import Optional

from sglang.srt.runtime_context import get_parallel

from sgl_layered.analysis.expert_traffic import counted_tokens
from sgl_layered.core.config import LayeredConfig

from . import experts
from .trace import TraceWriter, describe_layered, describe_stock_batch

logger = logging.getLogger("sgl_layered")


class IterationObserver:
    def __init__(self, config: LayeredConfig, model_runner, enable_metrics: bool):
        self.num_layers = int(model_runner.model_config.num_hidden_layers)
        tp_size = get_parallel().tp_size
        self.trace: Optional[TraceWriter] = None
        if config.layered_prefill_trace:
            rank = get_parallel().tp_rank
            path = config.layered_prefill_trace + (f".tp{rank}" if rank else "")
            self.trace = TraceWriter(path, self.num_layers)
        ledger = None
        if config.layered_prefill_expert_accounting:
            ledger = experts.ExpertLedger(experts.bytes_per_expert(model_runner.model, tp_size),
                                          config.layered_prefill_routing)
        if config.needs_expert_hook:
            experts.configure(ledger, config.layered_prefill_routing, config.layered_prefill_routing_alpha)
        if config.layered_prefill_routing != "model":
            logger.warning("sgl-layered: expert routing is overridden (%s): outputs are not the model's own; "
                           "use this only for traffic/timing benchmarks", config.layered_prefill_routing)
        if config.layered_prefill_cpu_fast_extend:
            logger.warning("sgl-layered: torch_native extend attention computes new rows only "
                           "(--layered-prefill-cpu-fast-extend, a benchmark setting)")
        self.ledger = ledger
        self.metrics = None
        if ledger is not None and enable_metrics and get_parallel().tp_rank == 0:
            from .metrics import ExpertCounters

            self.metrics = ExpertCounters()
        self._summaries = []

    def begin(self, iteration_no: int, batch, layered_iteration, scheduling: dict) -> None:
        summary = (describe_layered(layered_iteration) if layered_iteration is not None
                   else describe_stock_batch(batch, self.num_layers))
        summary["scheduling"] = scheduling
        if self.ledger is not None:
            # Whose rows this forward's MoE calls carry: a stock prefill or mixed batch starts with its prompt
            # requests' rows (the single piece); a decode or layered forward carries decode rows (the fused layers
            # and cohort-only passes announce their cohort's prompt rows themselves).
            piece = summary["prefill"][0] if summary["mode"] in ("prefill", "mixed") else None
            self.ledger.open_frame(experts.RowLayout(tuple(piece["rids"]), tuple(piece["req_tokens"]))
                                   if piece else experts.DECODE_ONLY)
        if self.trace is not None:
            self.trace.begin(iteration_no, summary)
        self._summaries.append(summary)

    def note_aborts(self, aborts) -> None:
        if self.trace is not None:
            self.trace.note(aborts=aborts)

    def forward_done(self) -> None:
        if self.trace is not None:
            self.trace.forward_done()

    def end(self, processed_batches) -> None:
        summary = self._summaries.pop(0) if self._summaries else {"prefill": []}
        extra = {}
        if self.ledger is not None:
            accounted = self.ledger.take()
            extra["experts"] = accounted
            _attribute(summary["prefill"], accounted)
            if self.metrics is not None:
                self.metrics.add(accounted, sum(counted_tokens(p) for p in summary["prefill"]))
        if self.trace is not None:
            finished = [r.rid for b in processed_batches for r in b.reqs if r.finished()]
            self.trace.end(finished=finished, **extra)


def _attribute(pieces, accounted: dict) -> None:
    """Give each prefill piece the prompt-attributable expert bytes of the MoE calls inside its layer range.
    Pieces of one iteration never share a layer (pipelined cohorts run disjoint groups; a stock batch is one
    piece over every layer), so each call belongs to at most one piece."""
    b = accounted["bytes_per_expert"]
    for p in pieces:
        lo, hi = p["layers"]
        p["expert_bytes"] = sum(distinct - distinct_decode for layer, _, prefill_rows, distinct, distinct_decode, *_
                                in accounted["layers"] if prefill_rows and lo <= layer < hi) * b
