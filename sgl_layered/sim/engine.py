"""Discrete-event serving simulator: requests arrive, a scheduling policy plans each iteration, the cost model
says how long it takes. The layered modes call the very policy objects the SGLang adapter uses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from sgl_layered.core.policy import CohortState, SchedulerView

from .cost import CostModel, PrefillWork


@dataclass
class SimRequest:
    rid: int
    arrival: float
    prompt: int
    output: int
    prefilled: int = 0  # prompt tokens computed (chunked mode)
    first_token: Optional[float] = None
    token_times: List[float] = field(default_factory=list)
    done: Optional[float] = None

    @property
    def context(self) -> int:
        return self.prompt + len(self.token_times)


@dataclass
class _Cohort:
    cid: int
    reqs: List[SimRequest]
    groups: tuple
    next_group: int = 0

    @property
    def tokens(self) -> int:
        return sum(r.prompt for r in self.reqs)

    def state(self) -> CohortState:
        return CohortState(self.cid, self.tokens, self.groups, self.next_group)


@dataclass
class SimResult:
    requests: List[SimRequest]
    iterations: int
    expert_bytes: float
    prefill_expert_bytes: float
    prefill_tokens: int
    busy_s: float


class Simulator:
    """mode: "chunked" (mixed chunked prefill, `chunk` tokens per iteration) or "layered" (a policy object)."""

    def __init__(self, cost: CostModel, mode: str, policy=None, chunk: int = 512, max_prefill_tokens: int = 16384,
                 kv_capacity_tokens: int = 10 ** 9, max_running: int = 1024, record: bool = False):
        if mode not in ("chunked", "layered"):
            raise ValueError(mode)
        self.cost, self.mode, self.policy, self.chunk = cost, mode, policy, chunk
        self.max_prefill_tokens, self.kv_capacity, self.max_running = max_prefill_tokens, kv_capacity_tokens, max_running
        self.layers = cost.m.layers
        # With record=True: one entry per iteration, (time, decode rows, [(cohort id, layers, tokens)], budget).
        self.log = [] if record else None

    def run(self, requests: List[SimRequest], max_iterations: int = 10 ** 7) -> SimResult:
        pending = sorted(requests, key=lambda r: r.arrival)
        waiting: List[SimRequest] = []
        decoding: List[SimRequest] = []
        prefilling: List[SimRequest] = []  # chunked mode: admitted, prompt partly computed
        cohorts: List[_Cohort] = []
        ids = itertools.count()
        t, i_arr, iterations = 0.0, 0, 0
        stats = {"expert": 0.0, "prefill_expert": 0.0, "tokens": 0, "busy": 0.0}

        def kv_used():
            return sum(r.prompt + r.output for r in decoding + prefilling) + sum(
                r.prompt + r.output for c in cohorts for r in c.reqs)

        while iterations < max_iterations:
            while i_arr < len(pending) and pending[i_arr].arrival <= t:
                waiting.append(pending[i_arr])
                i_arr += 1
            if not (waiting or decoding or prefilling or cohorts):
                if i_arr == len(pending):
                    break
                t = pending[i_arr].arrival
                continue
            works: List[PrefillWork] = []
            finishing_prefill: List[SimRequest] = []
            if self.mode == "chunked":
                # Admit FCFS while memory allows, then fill the chunk budget from the oldest prompts.
                while waiting and kv_used() + waiting[0].prompt + waiting[0].output <= self.kv_capacity and \
                        len(decoding) + len(prefilling) < self.max_running:
                    prefilling.append(waiting.pop(0))
                budget = self.chunk
                for r in prefilling:
                    if budget <= 0:
                        break
                    n = min(budget, r.prompt - r.prefilled)
                    works.append(PrefillWork(n, r.prefilled, (0, self.layers)))
                    r.prefilled += n
                    budget -= n
                    if r.prefilled == r.prompt:
                        finishing_prefill.append(r)
            else:
                def view():
                    return SchedulerView(self.layers, len(decoding), len(waiting), tuple(c.state() for c in cohorts),
                                         waiting[0].prompt if waiting else 0)
                if waiting and self.policy.may_admit(view()):
                    cap = min(self.max_prefill_tokens, self._admission_cap(view()))
                    batch, tokens = [], 0
                    while waiting and (not batch or tokens + waiting[0].prompt <= cap) and \
                            kv_used() + sum(r.prompt + r.output for r in batch) + waiting[0].prompt + \
                            waiting[0].output <= self.kv_capacity:
                        r = waiting.pop(0)
                        batch.append(r)
                        tokens += r.prompt
                    if batch:
                        groups = self.policy.partition(tokens, self.layers, view())
                        cohorts.append(_Cohort(next(ids), batch, tuple(groups)))
                if cohorts:
                    budget = getattr(self.policy, "token_layer_budget", None)
                    budget = budget(view()) if budget is not None else None
                    plan = self.policy.plan(view())
                    if self.log is not None:
                        self.log.append((t, len(decoding), [(p.cohort_id, p.layers, p.tokens) for p in plan.pieces],
                                         budget))
                    by_id = {c.cid: c for c in cohorts}
                    for piece in plan.pieces:
                        c = by_id[piece.cohort_id]
                        works.append(PrefillWork(c.tokens, 0, piece.layers))
                        c.next_group += 1
                        if c.next_group == len(c.groups):
                            finishing_prefill.extend(c.reqs)
                            cohorts.remove(c)
            if not works and not decoding:
                # Nothing runnable (memory full of waiting prompts that never fit): jump to the next arrival.
                if i_arr == len(pending):
                    raise RuntimeError("simulated server cannot admit the remaining requests (KV capacity)")
                t = pending[i_arr].arrival
                continue
            cost = self.cost.iteration([r.context for r in decoding], works)
            if self.policy is not None and hasattr(self.policy, "observe"):
                self.policy.observe(len(decoding), sum(w.tokens * (w.layers[1] - w.layers[0]) for w in works),
                                    self.layers, cost.seconds)
            t += cost.seconds
            iterations += 1
            stats["busy"] += cost.seconds
            stats["expert"] += cost.expert_bytes
            stats["prefill_expert"] += cost.prefill_expert_bytes
            stats["tokens"] += sum(w.tokens for w in works if w.layers[0] == 0)
            for r in decoding:
                r.token_times.append(t)
            still = []
            for r in decoding:
                if len(r.token_times) >= r.output:
                    r.done = t
                else:
                    still.append(r)
            decoding = still
            for r in finishing_prefill:
                if r in prefilling:
                    prefilling.remove(r)
                r.first_token = t
                r.token_times.append(t)
                if r.output <= 1:
                    r.done = t
                else:
                    decoding.append(r)
        return SimResult(requests, iterations, stats["expert"], stats["prefill_expert"], stats["tokens"],
                         stats["busy"])

    def _admission_cap(self, view) -> int:
        cap = getattr(self.policy, "admission_token_cap", None)
        return cap(view) if cap is not None else self.max_prefill_tokens
