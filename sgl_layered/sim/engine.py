"""Discrete-event serving simulator: requests arrive, a scheduling policy plans each iteration, the cost model
says how long it takes. The layered modes call the very policy objects the SGLang adapter uses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from sgl_layered.core.execution import PromptWork
from sgl_layered.core.roofline import CostModel
from sgl_layered.core.step import Admit, CohortState, Measurement, SchedulerView, Waiting


@dataclass
class SimRequest:
    rid: int
    arrival: float
    prompt: int
    output: int
    prefilled: int = 0  # prompt tokens computed (chunked mode)
    admitted: int = 0  # prompt tokens admitted into cohorts (layered mode; less than `prompt` while chunked)
    first_token: Optional[float] = None
    token_times: List[float] = field(default_factory=list)
    done: Optional[float] = None

    @property
    def context(self) -> int:
        return self.prompt + len(self.token_times)


@dataclass
class _Cohort:
    cid: int
    segments: List[Tuple[SimRequest, int, int]]  # (request, first prompt token, tokens): whole prompts or chunks
    groups: tuple
    next_group: int = 0

    @property
    def tokens(self) -> int:
        return sum(n for _, _, n in self.segments)

    @property
    def holds_chunk(self) -> bool:
        """A prompt's chunk short of its end: the rest waits for this chunk (as SGLang's chunked request does)."""
        return any(start + n < r.prompt for r, start, n in self.segments)

    def works(self, layers) -> List[PromptWork]:
        """One piece per prompt (or chunk): each attends over its own tokens and prefix only, as SGLang's extend
        attention does; one piece for the whole cohort would charge attention across its prompts."""
        return [PromptWork(n, start, layers) for _, start, n in self.segments]

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
    cohort_kinds: Dict[str, int] = field(default_factory=dict)  # layered (G > 1) / whole (G = 1) / chunked
    hbm_bytes: float = 0.0  # the cost model's HBM bytes and FLOPs, summed over iterations (energy inputs)
    flops: float = 0.0


class Simulator:
    """mode: "chunked" (mixed chunked prefill, `chunk` tokens per iteration) or "layered" (a policy object, asked
    once per iteration for its Step, exactly as the SGLang adapter asks it; its admissions may ask for chunks: the
    chunk x layer hybrid, or chunked execution)."""

    def __init__(self, cost: CostModel, mode: str, policy=None, chunk: int = 512, max_prefill_tokens: int = 16384,
                 kv_capacity_tokens: int = 10 ** 9, max_running: int = 1024, record: bool = False):
        if mode not in ("chunked", "layered"):
            raise ValueError(mode)
        self.cost, self.mode, self.policy, self.chunk = cost, mode, policy, chunk
        self._chunking: Optional[Admit] = None  # the admission the partly admitted head prompt started with
        self.cohort_kinds: Dict[str, int] = {}
        self.max_prefill_tokens, self.kv_capacity, self.max_running = max_prefill_tokens, kv_capacity_tokens, max_running
        self.layers = cost.m.layers
        # With record=True: one entry per layered iteration, (time, decode rows, [(cohort id, layers, tokens)], Step).
        self.log = [] if record else None

    def run(self, requests: List[SimRequest], max_iterations: int = 10 ** 7) -> SimResult:
        pending = sorted(requests, key=lambda r: r.arrival)
        waiting: List[SimRequest] = []
        decoding: List[SimRequest] = []
        prefilling: List[SimRequest] = []  # chunked mode: admitted, prompt partly computed
        cohorts: List[_Cohort] = []
        ids = itertools.count()
        t, i_arr, iterations = 0.0, 0, 0
        stats = {"expert": 0.0, "prefill_expert": 0.0, "tokens": 0, "busy": 0.0, "hbm": 0.0, "flops": 0.0}

        def kv_used():
            # Decoding and chunked-mode requests hold their whole prompt and output; a chunked cohort's request
            # holds the chunks admitted so far (its output once its last chunk is admitted).
            held = {id(r): r for c in cohorts for r, _, _ in c.segments}
            if waiting and waiting[0].admitted:
                held[id(waiting[0])] = waiting[0]
            return sum(r.prompt + r.output for r in decoding + prefilling) + sum(
                r.admitted + (r.output if r.admitted == r.prompt else 0) for r in held.values())

        while iterations < max_iterations:
            while i_arr < len(pending) and pending[i_arr].arrival <= t:
                waiting.append(pending[i_arr])
                i_arr += 1
            if not (waiting or decoding or prefilling or cohorts):
                if i_arr == len(pending):
                    break
                t = pending[i_arr].arrival
                continue
            works: List[PromptWork] = []
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
                    works.append(PromptWork(n, r.prefilled, (0, self.layers)))
                    r.prefilled += n
                    budget -= n
                    if r.prefilled == r.prompt:
                        finishing_prefill.append(r)
            else:
                step = self.policy.schedule(self._view(decoding, waiting, cohorts))
                pieces = list(step.pieces)
                if step.admit is not None and waiting:
                    new = self._admit(step.admit, waiting, cohorts, ids, kv_used())
                    if new is not None:
                        pieces.append(step.admitted_piece(new.cid, new.tokens, new.groups))
                if self.log is not None:
                    self.log.append((t, len(decoding), [(p.cohort_id, p.layers, p.tokens) for p in pieces], step))
                by_id = {c.cid: c for c in cohorts}
                for piece in pieces:
                    c = by_id[piece.cohort_id]
                    works.extend(c.works(piece.layers))
                    c.next_group += 1
                    if c.next_group == len(c.groups):
                        finishing_prefill.extend(r for r, start, n in c.segments if start + n == r.prompt)
                        cohorts.remove(c)
            if not works and not decoding:
                # Nothing runnable (memory full of waiting prompts that never fit): jump to the next arrival.
                if i_arr == len(pending):
                    raise RuntimeError("simulated server cannot admit the remaining requests (KV capacity)")
                t = pending[i_arr].arrival
                continue
            cost = self.cost.iteration([r.context for r in decoding], works)
            if self.policy is not None:
                self.policy.observe(Measurement(len(decoding), sum(w.tokens * (w.layers[1] - w.layers[0])
                                                                   for w in works), self.layers, cost.seconds))
            t += cost.seconds
            iterations += 1
            stats["busy"] += cost.seconds
            stats["expert"] += cost.expert_bytes
            stats["prefill_expert"] += cost.prefill_expert_bytes
            stats["hbm"] += cost.hbm_bytes
            stats["flops"] += cost.flops
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
                         stats["busy"], dict(self.cohort_kinds), stats["hbm"], stats["flops"])

    def _view(self, decoding: List[SimRequest], waiting: List[SimRequest], cohorts: List[_Cohort]) -> SchedulerView:
        admissible = 0
        for r in waiting:  # in queue order, up to what one admission can take (as the adapter sums)
            if admissible >= self.max_prefill_tokens:
                break
            admissible += r.prompt - r.admitted
        chunking = self._chunking if waiting and waiting[0].admitted else None
        return SchedulerView(
            num_layers=self.layers, decode_rows=len(decoding), decode_context=sum(r.context for r in decoding),
            cohorts=tuple(c.state() for c in cohorts),
            waiting=Waiting(len(waiting), waiting[0].prompt - waiting[0].admitted if waiting else 0,
                            min(admissible, self.max_prefill_tokens)),
            admission_open=not any(c.holds_chunk for c in cohorts), chunking=chunking)

    def _admit(self, admit: Admit, waiting: List[SimRequest], cohorts: List[_Cohort], ids, kv_used: int
               ) -> Optional[_Cohort]:
        """FCFS admission of one cohort as SGLang's PrefillAdder does it: up to the token cap (the first request
        even above it), while KV memory allows; with a chunk size, at most that many tokens, the last prompt
        truncated to a chunk that stays at the head of the queue."""
        cap = min(admit.token_cap if admit.token_cap is not None else self.max_prefill_tokens, self.max_prefill_tokens)
        chunk = admit.chunk_tokens
        if chunk:
            cap = min(cap, chunk)
        segments, tokens, reserved = [], 0, 0
        while waiting:
            r = waiting[0]
            n = r.prompt - r.admitted
            if chunk:
                n = min(n, max(cap - tokens, 0) if segments else max(cap, 1))
            if n <= 0 or (segments and tokens + n > cap):
                break
            need = n + (r.output if r.admitted + n == r.prompt else 0)
            if kv_used + reserved + need > self.kv_capacity:
                break
            segments.append((r, r.admitted, n))
            r.admitted += n
            tokens += n
            reserved += need
            if r.admitted < r.prompt:
                self._chunking = admit  # the rest of this prompt is admitted the same way
                break  # a chunked prompt: nothing after it joins this cohort
            waiting.pop(0)
        if not segments:
            return None
        groups = admit.groups.split(tokens, self.layers)
        cohort = _Cohort(next(ids), segments, tuple(groups))
        cohorts.append(cohort)
        kind = "chunked" if admit.execution == "chunked" else ("whole" if len(groups) == 1 else "layered")
        self.cohort_kinds[kind] = self.cohort_kinds.get(kind, 0) + 1
        return cohort
