"""Scheduling policy for layered prefill: plain data in, a frozen plan out.

The adapter (SGLang) and the simulator both describe the scheduler's state as a `SchedulerView` and ask a
policy for an `IterationPlan`. The plan names, for this iteration, which layer range each in-flight cohort
runs; every running decode request always runs through all layers in the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .partition import LayerRange, paper_group_count, split_layers


@dataclass(frozen=True)
class CohortState:
    """What the policy knows about one admitted prompt cohort."""

    cohort_id: int
    new_tokens: int  # prompt tokens the cohort still has to compute (after prefix-cache hits)
    groups: Tuple[LayerRange, ...]  # its layer partition, fixed at admission
    next_group: int  # index into `groups` of the pass it runs next


@dataclass(frozen=True)
class SchedulerView:
    num_layers: int
    decode_rows: int  # running decode requests this iteration
    waiting_requests: int
    cohorts: Tuple[CohortState, ...] = ()
    head_waiting_tokens: int = 0  # prompt length of the first waiting request (an upper bound on its new tokens)
    waiting_tokens: int = 0  # prompt tokens of all waiting requests still to compute (upper bound)
    decode_context: int = 0  # context tokens (prompt + generated) of the running decode requests
    head_wait_s: float = 0.0  # how long the first waiting request has waited


@dataclass(frozen=True)
class Piece:
    """One cohort's layered pass in one iteration."""

    cohort_id: int
    layers: LayerRange
    tokens: int
    final: bool  # the cohort's last group: it samples its first token and joins decode afterwards


@dataclass(frozen=True)
class IterationPlan:
    decode_rows: int
    pieces: Tuple[Piece, ...]

    @property
    def prefill_token_layers(self) -> int:
        return sum(p.tokens * (p.layers[1] - p.layers[0]) for p in self.pieces)


class PlanInvariantError(AssertionError):
    pass


class PaperPolicy:
    """The schedule of arXiv 2510.08055: one cohort at a time, G fixed or from the prompt length.

    groups=None selects the paper's rule G = clamp(ceil(L / tokens_per_group), 1, N).
    """

    name = "paper"

    def __init__(self, groups: Optional[int] = None, tokens_per_group: int = 512):
        self.groups = groups
        self.tokens_per_group = tokens_per_group

    def may_admit(self, view: SchedulerView) -> bool:
        """Admit a new cohort only when none is in flight (a new arrival waits for the current cohort)."""
        return not view.cohorts and view.waiting_requests > 0

    def partition(self, new_tokens: int, num_layers: int, view: Optional[SchedulerView] = None
                  ) -> Tuple[LayerRange, ...]:
        g = self.groups if self.groups is not None else paper_group_count(
            new_tokens, num_layers, self.tokens_per_group)
        return tuple(split_layers(num_layers, min(g, num_layers)))

    def plan(self, view: SchedulerView) -> IterationPlan:
        pieces = tuple(
            Piece(c.cohort_id, c.groups[c.next_group], c.new_tokens, c.next_group == len(c.groups) - 1)
            for c in view.cohorts
        )
        plan = IterationPlan(decode_rows=view.decode_rows, pieces=pieces)
        check_plan(view, plan)
        return plan


def check_plan(view: SchedulerView, plan: IterationPlan) -> None:
    """Invariants every policy's plan must keep; a violation is a bug, never a scheduling choice."""
    by_id = {c.cohort_id: c for c in view.cohorts}
    seen = set()
    for p in plan.pieces:
        c = by_id.get(p.cohort_id)
        if c is None:
            raise PlanInvariantError(f"plan runs unknown cohort {p.cohort_id}")
        if p.cohort_id in seen:
            raise PlanInvariantError(f"cohort {p.cohort_id} runs twice in one iteration")
        seen.add(p.cohort_id)
        if p.layers != c.groups[c.next_group]:
            raise PlanInvariantError(
                f"cohort {p.cohort_id} must run its next group {c.groups[c.next_group]}, plan says {p.layers}")
        lo, hi = p.layers
        if not 0 <= lo < hi <= view.num_layers:
            raise PlanInvariantError(f"layer range {p.layers} outside 0..{view.num_layers}")
    if plan.decode_rows != view.decode_rows:
        raise PlanInvariantError("every running decode request must run in every iteration")
