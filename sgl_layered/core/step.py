"""The scheduling contract: plain data in (`SchedulerView`), one decision out (`Step`), once per iteration.

The SGLang adapter and the simulator describe their state as a SchedulerView and call `policy.schedule(view)`
exactly once per iteration; the returned Step says everything the iteration does with prompts: each in-flight
cohort's next layer range, and whether (and how) a new cohort may be admitted. The admitted cohort's size is
known only after SGLang's admission has matched prefixes and allocated KV, so the Step carries the rule that
splits its layers (`GroupRule`), not the split itself; nothing asks the policy again within the iteration.

Every input of `schedule` is identical on every tensor-parallel rank (the view is built from state SGLang keeps
identical; measured times reach a policy only through `observe`, fed from one rank), so every rank executes the
same Step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Tuple

from .partition import LayerRange, paper_group_count, split_layers


@dataclass(frozen=True)
class CohortState:
    """An admitted prompt cohort, as the policy sees it."""

    cohort_id: int
    new_tokens: int  # prompt tokens the cohort computes (after prefix-cache hits)
    groups: Tuple[LayerRange, ...]  # its layer partition, fixed at admission
    next_group: int  # index into `groups` of the pass it runs next

    @property
    def next_layers(self) -> LayerRange:
        return self.groups[self.next_group]

    @property
    def remaining_groups(self) -> int:
        return len(self.groups) - self.next_group


@dataclass(frozen=True)
class Waiting:
    """The waiting queue, summarised at a cost that does not grow with its length."""

    requests: int = 0
    head_tokens: int = 0  # prompt length of the first waiting request (an upper bound on its new tokens)
    # Prompt tokens of the waiting requests in queue order, summed until they reach the most one admission can take
    # (SGLang's per-batch limit): exact below that, that limit above it.
    admissible_tokens: int = 0


@dataclass(frozen=True)
class SchedulerView:
    num_layers: int
    decode_rows: int = 0  # running decode requests this iteration
    decode_context: int = 0  # context tokens (prompt + generated) of the running decode requests
    cohorts: Tuple[CohortState, ...] = ()
    waiting: Waiting = Waiting()
    admission_open: bool = True  # False while a chunk of a longer prompt is mid-layers (its next chunk comes first)
    # The admission SGLang is still carrying out chunk by chunk: its chunk size and execution hold for the rest of
    # the prompt.
    chunking: Optional["Admit"] = None


@dataclass(frozen=True)
class Piece:
    """One cohort's pass over one layer range in one iteration."""

    cohort_id: int
    layers: LayerRange
    tokens: int
    final: bool  # the cohort's last group: it samples its first token and joins decode afterwards

    @property
    def token_layers(self) -> int:
        return self.tokens * (self.layers[1] - self.layers[0])


def token_layers(pieces: Sequence[Piece]) -> int:
    """Prefill work of an iteration: prompt tokens x layers they cross."""
    return sum(p.token_layers for p in pieces)


@dataclass(frozen=True)
class GroupRule:
    """How an admitted cohort's layers are split once its new-token count is known. Exactly one rule is set:

    shared             join the pipeline: the partition of the cohorts in flight (their ranges never overlap);
    groups             a fixed count (--layered-prefill-groups N; 1 runs the cohort whole);
    tokens_per_group   the paper's rule G = clamp(ceil(L / tokens_per_group), 1, N);
    budget             the fewest groups none of whose passes carries more than `budget` token-layers (with
                       `layer_costs`: the cost-balanced split of the average count; see `budget_groups`)."""

    shared: Optional[Tuple[LayerRange, ...]] = None
    groups: Optional[int] = None
    tokens_per_group: Optional[int] = None
    budget: Optional[float] = None
    layer_costs: Optional[Tuple[float, ...]] = None

    def __post_init__(self):
        rules = [x for x in (self.shared, self.groups, self.tokens_per_group, self.budget) if x is not None]
        if len(rules) != 1:
            raise ValueError(f"a GroupRule sets exactly one rule, got {self}")
        if self.layer_costs is not None and self.budget is None:
            raise ValueError("layer_costs refine the budget rule only")

    def split(self, new_tokens: int, num_layers: int) -> Tuple[LayerRange, ...]:
        if self.shared is not None:
            return self.shared
        if self.groups is not None:
            return tuple(split_layers(num_layers, min(self.groups, num_layers)))
        if self.tokens_per_group is not None:
            return tuple(split_layers(num_layers, paper_group_count(new_tokens, num_layers, self.tokens_per_group)))
        return budget_groups(new_tokens, num_layers, self.budget, self.layer_costs)


def budget_groups(new_tokens: int, num_layers: int, budget: float,
                  layer_costs: Optional[Tuple[float, ...]] = None) -> Tuple[LayerRange, ...]:
    """Fewest groups none of whose passes carries more than `budget` token-layers (a cohort above the budget: one
    layer per group). Split by count, groups differ by one layer, so the count comes from the layers one pass may
    hold, not from the average: ceil(tokens * N / budget) groups would put two layers in some groups and one in
    others (3125 tokens, 8 layers, budget 512 x 8: 7 groups, the first 1.5x the budget; measured on the CPU engine
    as a 1.7 s token gap). Split by cost, the cost-balanced ranges take the average count."""
    if layer_costs is not None and len(layer_costs) == num_layers:
        count = num_layers if budget <= 0 else min(num_layers, max(1, -(-new_tokens * num_layers // max(int(budget), 1))))
        return split_by_cost(layer_costs, count)
    layers_per_pass = int(budget // max(new_tokens, 1)) if budget > 0 else 0
    count = num_layers if layers_per_pass < 1 else min(num_layers, -(-num_layers // layers_per_pass))
    return tuple(split_layers(num_layers, count))


def split_by_cost(layer_costs: Sequence[float], groups: int) -> Tuple[LayerRange, ...]:
    """`groups` contiguous ranges with about equal total cost (each at least one layer)."""
    n = len(layer_costs)
    total = sum(layer_costs)
    ranges, start, acc = [], 0, 0.0
    for g in range(groups - 1):
        target = total * (g + 1) / groups
        end = start + 1
        acc += layer_costs[start]
        while end < n - (groups - 1 - g) and acc + layer_costs[end] / 2 < target:
            acc += layer_costs[end]
            end += 1
        ranges.append((start, end))
        start = end
    ranges.append((start, n))
    return tuple(ranges)


@dataclass(frozen=True)
class Admit:
    """Admission of a new cohort this iteration, through SGLang's own admission (FCFS, prefix cache, KV memory)."""

    groups: GroupRule
    token_cap: Optional[int] = None  # most new tokens the cohort may bring (None: SGLang's own per-batch limit)
    chunk_tokens: Optional[int] = None  # admit a longer prompt a chunk of this size at a time (SGLang's chunking)
    execution: str = "layered"  # "chunked": the policy chose chunks through every layer for this prompt


@dataclass(frozen=True)
class Step:
    pieces: Tuple[Piece, ...]  # each in-flight cohort's pass this iteration
    admit: Optional[Admit] = None  # None: admit nothing this iteration

    def admitted_piece(self, cohort_id: int, new_tokens: int, groups: Tuple[LayerRange, ...]) -> Piece:
        """The first pass of the cohort this Step admitted (it runs in the same iteration)."""
        return Piece(cohort_id, groups[0], new_tokens, len(groups) == 1)


@dataclass(frozen=True)
class Measurement:
    """One iteration as it ran: the policy's online cost model learns from these (taken on one rank)."""

    decode_rows: int
    token_layers: int
    num_layers: int
    seconds: float


class Policy(Protocol):
    name: str
    max_cohorts: int  # cohorts in flight at most (the runtime provisions per-cohort resources for that many)

    def schedule(self, view: SchedulerView) -> Step:
        """The whole decision of one iteration."""

    def observe(self, measurement: Measurement) -> None:
        """Feedback after an iteration ran (identical on every rank)."""


class StepInvariantError(AssertionError):
    pass


def next_pieces(view: SchedulerView) -> Tuple[Piece, ...]:
    """Every in-flight cohort runs its next group: a cohort never pauses mid-layers."""
    return tuple(Piece(c.cohort_id, c.next_layers, c.new_tokens, c.remaining_groups == 1) for c in view.cohorts)


def check_step(view: SchedulerView, step: Step) -> Step:
    """Invariants every policy's Step keeps; a violation is a bug, never a scheduling choice."""
    by_id = {c.cohort_id: c for c in view.cohorts}
    if sorted(p.cohort_id for p in step.pieces) != sorted(by_id):
        raise StepInvariantError(f"every in-flight cohort runs exactly once: cohorts {sorted(by_id)}, "
                                 f"pieces {[p.cohort_id for p in step.pieces]}")
    for p in step.pieces:
        c = by_id[p.cohort_id]
        if p.layers != c.next_layers:
            raise StepInvariantError(f"cohort {p.cohort_id} must run its next group {c.next_layers}, got {p.layers}")
        lo, hi = p.layers
        if not 0 <= lo < hi <= view.num_layers:
            raise StepInvariantError(f"layer range {p.layers} outside 0..{view.num_layers}")
    ranges = sorted(p.layers for p in step.pieces)
    if any(a[1] > b[0] for a, b in zip(ranges, ranges[1:])):
        raise StepInvariantError(f"pieces overlap in layers: {ranges}")
    admit = step.admit
    if admit is not None:
        if not view.admission_open:
            raise StepInvariantError("admission while a chunk of a longer prompt is mid-layers")
        if admit.token_cap is not None and admit.token_cap < 0:
            raise StepInvariantError(f"negative token cap {admit.token_cap}")
        if admit.groups.shared is not None and (not view.cohorts or admit.groups.shared != view.cohorts[0].groups):
            raise StepInvariantError("a joining cohort must share the partition of the cohorts in flight")
        if view.chunking is not None and (admit.chunk_tokens, admit.execution) != (view.chunking.chunk_tokens,
                                                                                  view.chunking.execution):
            raise StepInvariantError(f"a prompt admitted as {view.chunking} must keep its chunk size and execution")
    return step
