"""Our layered-prefill policy: the paper's schedule plus switchable improvements.

  adaptive   choose each cohort's group count from a cost model fitted online to measured iteration times,
             so a predicted iteration stays within the TBT target (the paper picks G from length alone);
             with `layer_costs`, split layers by cost rather than count (dense first layers, shared experts);
  pipeline   several cohorts in flight: a new cohort starts group 0 while earlier ones run later groups
             (cohorts in flight share one layer partition, so their layer ranges never overlap), as long as
             the predicted iteration stays within the target and joining does not give the joiner its first
             token later than waiting for the cohorts in flight would (the shared partition can be longer
             than the joiner's own); eager_join drops that last condition (the first version's behaviour);
  idle_whole nothing decoding -> nothing to protect: the cohort runs all layers in one pass;
  stash      the activation stash (hidden + residual of every in-flight prompt row) counts against a memory
             budget: admission never overcommits it;
  choose     per cohort, layered or chunked execution, whichever a cost model that sees per-layer bytes and
             flops predicts adds less time (core/execution.py); needs that model (`iteration_cost`).
Every decision is plain arithmetic on a SchedulerView, so the SGLang adapter and the simulator run this code
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .execution import Execution, IterationCost, PieceWork, choose_execution
from .partition import LayerRange, split_layers
from .policy import IterationPlan, Piece, SchedulerView, check_plan


class OnlineCostModel:
    """seconds ~ a + b * decode_rows + c * prefill_token_layers / num_layers, least squares over a sliding window
    (running sums, so an observation costs O(1))."""

    def __init__(self, window: int = 256, min_samples: int = 8):
        self.window, self.min_samples = window, min_samples
        self.samples: List[Tuple[float, float, float]] = []
        self._sums = [0.0] * 8  # x1, x2, x1x1, x2x2, x1x2, y, x1y, x2y
        self.coef: Optional[Tuple[float, float, float]] = None

    def _add(self, x1, x2, y, sign):
        for i, v in enumerate((x1, x2, x1 * x1, x2 * x2, x1 * x2, y, x1 * y, x2 * y)):
            self._sums[i] += sign * v

    def observe(self, decode_rows: int, prefill_token_layers: float, num_layers: int, seconds: float) -> None:
        sample = (float(decode_rows), prefill_token_layers / max(num_layers, 1), seconds)
        self.samples.append(sample)
        self._add(*sample, 1)
        if len(self.samples) > self.window:
            self._add(*self.samples.pop(0), -1)
        if len(self.samples) >= self.min_samples:
            self.coef = _least_squares(len(self.samples), self._sums) or self.coef

    @property
    def ready(self) -> bool:
        return self.coef is not None

    def predict(self, decode_rows: float, prefill_token_layers: float, num_layers: int) -> float:
        a, b, c = self.coef
        return a + b * decode_rows + c * prefill_token_layers / max(num_layers, 1)


def _least_squares(n, sums) -> Optional[Tuple[float, float, float]]:
    # Normal equations for [1, x1, x2] -> y, solved by Cramer's rule; coefficients clamped non-negative.
    s1, s2, s11, s22, s12, sy, s1y, s2y = sums
    m = [[n, s1, s2], [s1, s11, s12], [s2, s12, s22]]
    v = [sy, s1y, s2y]

    def det(a):
        return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))

    d = det(m)
    if abs(d) < 1e-9 * max(1.0, abs(m[1][1] * m[2][2])):
        return None  # not enough variety yet (e.g. only decode iterations)
    coef = []
    for j in range(3):
        mj = [row[:] for row in m]
        for i in range(3):
            mj[i][j] = v[i]
        coef.append(det(mj) / d)
    return tuple(max(0.0, c) for c in coef)


@dataclass
class Switches:
    adaptive: bool = True
    pipeline: bool = True
    idle_whole: bool = False  # see config.layered_prefill_switches: off by default
    stash: bool = True
    choose: bool = True  # active only with an iteration cost model
    eager_join: bool = False  # pipeline: join whenever the budget allows, even when waiting would finish sooner


@dataclass(frozen=True)
class Admission:
    """How the next cohort is admitted: at most `token_cap` new tokens; with `chunk_tokens`, a longer prompt
    is admitted a chunk at a time (SGLang's chunked admission) and each chunk runs all layers at once."""

    token_cap: int
    chunk_tokens: Optional[int] = None
    execution: Optional[Execution] = None  # the choice and its predicted costs, when one was made


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


class AdaptivePolicy:
    """tbt_target_s=None: each iteration may carry the paper's per-iteration prefill work (tokens_per_group
    tokens through every layer); with a target, the online cost model decides how much prefill fits."""

    name = "adaptive"
    BITE_GAIN = 0.5  # a bigger prefill bite must cut the iteration time per prompt token to this fraction

    def __init__(self, tbt_target_s: Optional[float] = None, switches: Switches = Switches(),
                 tokens_per_group: int = 512, max_cohorts: int = 4, stash_budget_bytes: Optional[float] = None,
                 stash_bytes_per_token: float = 0.0, layer_costs: Optional[Sequence[float]] = None,
                 model: Optional[OnlineCostModel] = None, min_piece_tokens: int = 16,
                 iteration_cost: Optional[IterationCost] = None):
        self.tbt_target_s = tbt_target_s
        self.switches = switches
        self.tokens_per_group = tokens_per_group
        self.max_cohorts = max_cohorts if switches.pipeline else 1
        self.stash_budget_bytes = stash_budget_bytes if switches.stash else None
        self.stash_bytes_per_token = stash_bytes_per_token
        # Split by cost only where layers differ (dense first layers, shared experts): with equal costs the split by
        # count keeps the extra layers in early groups, so the sampling (last) iteration is never the heaviest.
        uneven = layer_costs and max(layer_costs) > 1.05 * min(layer_costs)
        self.layer_costs = list(layer_costs) if uneven else None
        self.model = model or OnlineCostModel()
        self.min_piece_tokens = min_piece_tokens
        self.iteration_cost = iteration_cost if switches.choose else None
        self._admission_budget: Optional[float] = None  # set by admission(), used by the partition that follows
        self._predicted_memo: Tuple[object, float] = (None, 0.0)  # one search per decode batch, not per call

    # -- feedback -----------------------------------------------------------------------------------------
    def observe(self, decode_rows: int, prefill_token_layers: float, num_layers: int, seconds: float) -> None:
        self.model.observe(decode_rows, prefill_token_layers, num_layers, seconds)

    def token_layer_budget(self, view: SchedulerView) -> float:
        """Prefill token-layers one iteration may carry next to this decode batch."""
        paper = float(self.tokens_per_group * view.num_layers)
        if not self.switches.adaptive or self.tbt_target_s is None:
            return paper
        budget = None
        if self.model.ready and self.model.coef[2] > 0:
            a, b, c = self.model.coef
            budget = max(0.0, (self.tbt_target_s - a - b * view.decode_rows) / c * view.num_layers)
        if self.iteration_cost is None:
            return paper if budget is None else budget
        # With the roofline model: never above what it predicts fits the target (the online model is linear in
        # token-layers and blind to a big prompt's quadratic attention), and its answer alone until measured
        # times identify the online model (with chunks of one size only, they never would).
        predicted = self._predicted_budget(view)
        budget = predicted if budget is None else min(budget, predicted)
        if budget > paper and not self._bigger_bites_pay(view, budget):
            return paper
        return budget

    def _bigger_bites_pay(self, view: SchedulerView, budget: float) -> bool:
        """Whether a bite beyond the paper's at least doubles prefill throughput (prompt tokens per iteration
        second). Where an iteration at the paper's bite is mostly fixed cost (MoE expert loads for the decode
        rows, per-iteration overhead) big bites amortise it; where it is mostly the bite's own flops (dense
        layers) they buy little and only trade decode latency for TTFT."""
        n, small = view.num_layers, self.tokens_per_group
        big = int(budget // n)

        def seconds_per_token(tokens):
            return self.iteration_cost(view.decode_rows, view.decode_context, (PieceWork(tokens, 0, (0, n)),)) / tokens
        return seconds_per_token(big) <= self.BITE_GAIN * seconds_per_token(small)

    def _predicted_budget(self, view: SchedulerView) -> float:
        """Largest full-depth prompt pass (in token-layers) the iteration cost model keeps within the target."""
        key = (view.num_layers, view.decode_rows, view.decode_context)
        if self._predicted_memo[0] != key:
            self._predicted_memo = (key, self._search_budget(view))
        return self._predicted_memo[1]

    def _search_budget(self, view: SchedulerView) -> float:
        def fits(tokens):
            pieces = (PieceWork(tokens, 0, (0, view.num_layers)),)
            return self.iteration_cost(view.decode_rows, view.decode_context, pieces) <= self.tbt_target_s
        lo, hi = 0, 1
        while fits(hi) and hi < 1 << 22:
            lo, hi = hi, hi * 2
        while hi - lo > max(1, lo // 64):  # within ~2%: the budget is a target, not a bound to the token
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return float(lo * view.num_layers)

    @staticmethod
    def in_flight_token_layers(view: SchedulerView) -> float:
        return sum(c.new_tokens * (c.groups[c.next_group][1] - c.groups[c.next_group][0]) for c in view.cohorts)

    # -- admission ------------------------------------------------------------------------------------------
    def may_admit(self, view: SchedulerView) -> bool:
        if view.waiting_requests <= 0:
            return False
        if not view.cohorts:
            return True
        if len(view.cohorts) >= self.max_cohorts:
            return False
        # A pipelined cohort starts at group 0 of the shared partition: that slot must be free, i.e. every
        # cohort in flight has moved past group 0, and the pipeline must have a free stage.
        groups = view.cohorts[0].groups
        if any(c.next_group == 0 for c in view.cohorts) or len(view.cohorts) >= len(groups):
            return False
        cap = self.admission_token_cap(view)
        # SGLang admits the first waiting request even above the token cap: wait unless it fits.
        if cap < max(self.min_piece_tokens, view.head_waiting_tokens):
            return False
        return self.switches.eager_join or self._joining_is_sooner(view)

    def _joining_is_sooner(self, view: SchedulerView) -> bool:
        """A joiner runs every group of the shared partition; waiting (also on a tie: the queue then forms one cohort), it starts after the cohorts in flight
        finish and runs its own (shorter, for a short prompt) partition. Measured on the CPU engine: a 54-token
        prompt joining a 4-group partition at its last group took 4 iterations instead of 1 + 1, and the
        cohorts joining behind it kept the long partition alive (a convoy)."""
        shared = len(view.cohorts[0].groups)
        remaining = max(len(c.groups) - c.next_group for c in view.cohorts)
        alone = SchedulerView(view.num_layers, view.decode_rows, view.waiting_requests, (),
                              view.head_waiting_tokens, view.waiting_tokens, view.decode_context, view.head_wait_s)
        tokens = min(max(view.waiting_tokens, view.head_waiting_tokens), self.admission_token_cap(alone))
        own = self._group_count(tokens, view.num_layers, self.token_layer_budget(alone))
        return shared < remaining + own

    def admission_token_cap(self, view: SchedulerView) -> int:
        """Most new prompt tokens the next cohort may bring: what fits in this iteration's prefill budget beside
        the cohorts in flight (alone: what fits at one layer per group), and in the activation-stash budget."""
        cap = float(1 << 62)
        if view.cohorts:
            g0 = view.cohorts[0].groups[0]
            cap = (self.token_layer_budget(view) - self.in_flight_token_layers(view)) / (g0[1] - g0[0])
        elif self.switches.adaptive and not (self.switches.idle_whole and view.decode_rows == 0):
            # The paper admits every waiting prompt at once; past budget/1 tokens even one layer per group
            # overruns the iteration budget (a token-gap spike). Larger backlogs form the next cohorts.
            cap = self.token_layer_budget(view)
        if self.stash_budget_bytes is not None and self.stash_bytes_per_token > 0:
            used = sum(c.new_tokens for c in view.cohorts) * self.stash_bytes_per_token
            cap = min(cap, (self.stash_budget_bytes - used) / self.stash_bytes_per_token)
        return max(0, int(cap))

    def admission(self, view: SchedulerView) -> Admission:
        """The next cohort's token cap and, when the cost model says chunks add less time than layer groups,
        its chunk size. Only a cohort that starts alone chooses: one joining the pipeline shares its partition."""
        cap = self.admission_token_cap(view)
        self._admission_budget = None
        if self.iteration_cost is None or view.cohorts or (self.switches.idle_whole and view.decode_rows == 0):
            return Admission(cap)
        # partition() runs after the admission, when the queue is shorter: it must size the cohort's groups with
        # the budget this choice was made at.
        budget = self._admission_budget = self.token_layer_budget(view)
        if budget > self.tokens_per_group * view.num_layers:
            # Bites beyond the paper's run layered: the online model sizing them sees token-layers, not a chunk's
            # attention over its growing prefix, so big chunks would overrun the target.
            return Admission(cap)
        tokens = min(cap, max(view.waiting_tokens, view.head_waiting_tokens))
        choice = choose_execution(self.iteration_cost, tokens, view.num_layers, budget,
                                  view.decode_rows, view.decode_context)
        if choice.kind == "chunked":
            return Admission(min(cap, choice.chunk_tokens), choice.chunk_tokens, choice)
        return Admission(cap, None, choice)

    # -- partition ------------------------------------------------------------------------------------------
    def partition(self, new_tokens: int, num_layers: int, view: Optional[SchedulerView] = None
                  ) -> Tuple[LayerRange, ...]:
        if view is not None and view.cohorts:
            return view.cohorts[0].groups  # join the pipeline: same partition, never overlapping layer ranges
        decode_rows = view.decode_rows if view is not None else 0
        if self.switches.idle_whole and decode_rows == 0:
            return ((0, num_layers),)
        if view is None:
            view = SchedulerView(num_layers, decode_rows, 0)
        budget, self._admission_budget = self._admission_budget or self.token_layer_budget(view), None
        groups = self._group_count(new_tokens, num_layers, budget)
        if self._splits_by_cost(num_layers):
            return split_by_cost(self.layer_costs, groups)
        return tuple(split_layers(num_layers, groups))

    def _splits_by_cost(self, num_layers: int) -> bool:
        return bool(self.layer_costs) and len(self.layer_costs) == num_layers

    def _group_count(self, new_tokens: int, num_layers: int, budget: float) -> int:
        """Fewest groups none of whose passes carries more than `budget` token-layers (a cohort above the budget:
        one layer per group). Split by count, groups differ by one layer, so the count comes from the layers one
        pass may hold, not from the average: ceil(tokens * N / budget) groups would put two layers in some groups
        and one in others (3125 tokens, 8 layers, budget 512 x 8: 7 groups, the first 1.5x the budget; measured
        on the CPU engine as a 1.7 s token gap). Split by cost, the cost-balanced ranges take the average count."""
        if budget <= 0:
            return num_layers
        if self._splits_by_cost(num_layers):
            return min(num_layers, max(1, -(-new_tokens * num_layers // max(int(budget), 1))))
        layers_per_pass = int(budget // max(new_tokens, 1))
        return num_layers if layers_per_pass < 1 else min(num_layers, -(-num_layers // layers_per_pass))

    # -- plan -----------------------------------------------------------------------------------------------
    def plan(self, view: SchedulerView) -> IterationPlan:
        pieces = tuple(Piece(c.cohort_id, c.groups[c.next_group], c.new_tokens, c.next_group == len(c.groups) - 1)
                       for c in view.cohorts)
        plan = IterationPlan(decode_rows=view.decode_rows, pieces=pieces)
        check_plan(view, plan)
        ranges = sorted(p.layers for p in pieces)
        if any(a[1] > b[0] for a, b in zip(ranges, ranges[1:])):
            raise AssertionError(f"pieces overlap in layers: {ranges}")
        return plan
