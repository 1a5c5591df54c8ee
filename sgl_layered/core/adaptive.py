"""Our layered-prefill policy: the paper's schedule plus switchable improvements.

  adaptive   choose each cohort's group count from a token-layer budget: the paper's per-iteration work, or with
             a TBT target what a cost model fitted online to measured iterations predicts fits the target (the
             paper picks G from length alone); with `layer_costs`, split layers by cost rather than count (dense
             first layers, shared experts);
  pipeline   several cohorts in flight: a new cohort starts group 0 while earlier ones run later groups
             (cohorts in flight share one layer partition, so their layer ranges never overlap), as long as
             the iteration stays within the budget and joining does not give the joiner its first token later
             than waiting for the cohorts in flight would (the shared partition can be longer than the joiner's
             own); eager_join drops that last condition (the first version's behaviour);
  idle_whole nothing decoding -> nothing to protect: the cohort runs all layers in one pass;
  stash      the activation stash (hidden + residual of every in-flight prompt row) counts against a memory
             budget: admission never overcommits it;
  choose     per cohort, layered or chunked execution, whichever a cost model that sees per-layer bytes and
             flops predicts adds less time (core/execution.py); needs that model (`predict_seconds`).
`schedule` is plain arithmetic on a SchedulerView, so the SGLang adapter and the simulator run this code unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from .execution import PromptWork, SecondsPredictor, choose_execution
from .online_cost import OnlineCostModel
from .step import Admit, GroupRule, Measurement, SchedulerView, Step, budget_groups, check_step, next_pieces, \
    token_layers


@dataclass
class Switches:
    adaptive: bool = True
    pipeline: bool = True
    idle_whole: bool = False  # see config.layered_prefill_switches: off by default
    stash: bool = True
    choose: bool = True  # active only with an iteration cost model
    eager_join: bool = False  # pipeline: join whenever the budget allows, even when waiting would finish sooner


class AdaptivePolicy:
    """tbt_target_s=None: each iteration may carry the paper's per-iteration prefill work (tokens_per_group
    tokens through every layer); with a target, the online cost model decides how much prefill fits."""

    name = "adaptive"
    BITE_GAIN = 0.5  # a bigger prefill bite must cut the iteration time per prompt token to this fraction

    def __init__(self, tbt_target_s: Optional[float] = None, switches: Switches = Switches(),
                 tokens_per_group: int = 512, max_cohorts: int = 4, stash_budget_bytes: Optional[float] = None,
                 stash_bytes_per_token: float = 0.0, layer_costs: Optional[Sequence[float]] = None,
                 model: Optional[OnlineCostModel] = None, min_piece_tokens: int = 16,
                 predict_seconds: Optional[SecondsPredictor] = None, chunk_tokens: Optional[int] = None):
        self.tbt_target_s = tbt_target_s
        self.switches = switches
        self.tokens_per_group = tokens_per_group
        self.max_cohorts = max_cohorts if switches.pipeline else 1
        self.stash_budget_bytes = stash_budget_bytes if switches.stash else None
        self.stash_bytes_per_token = stash_bytes_per_token
        # Split by cost only where layers differ (dense first layers, shared experts): with equal costs the split by
        # count keeps the extra layers in early groups, so the sampling (last) iteration is never the heaviest.
        uneven = layer_costs and max(layer_costs) > 1.05 * min(layer_costs)
        self.layer_costs = tuple(layer_costs) if uneven else None
        self.model = model or OnlineCostModel()
        self.min_piece_tokens = min_piece_tokens
        self.predict_seconds = predict_seconds if switches.choose else None
        self.chunk_tokens = chunk_tokens  # the chunk x layer hybrid (--layered-prefill-chunk-tokens)
        self._predicted_memo = (None, 0.0)  # one budget search per decode batch, not per call

    # -- the decision -----------------------------------------------------------------------------------------
    def schedule(self, view: SchedulerView) -> Step:
        admit = None
        if view.admission_open:
            admit = self._join(view) if view.cohorts else self._start(view)
        return check_step(view, Step(next_pieces(view), admit))

    def observe(self, measurement: Measurement) -> None:
        self.model.observe(measurement)

    def _start(self, view: SchedulerView) -> Admit:
        """A cohort with none in flight. Only such a cohort chooses its execution: a joiner shares the partition."""
        cap, chunk = self.admission_token_cap(view), self.chunk_tokens
        if self.switches.idle_whole and view.decode_rows == 0:
            rule = GroupRule(groups=1)
        else:
            rule = GroupRule(budget=self.token_layer_budget(view), layer_costs=self.layer_costs)
        if view.chunking is not None:  # the rest of a prompt admitted in chunks: same chunk size and execution
            return replace(view.chunking, groups=rule, token_cap=min(cap, view.chunking.chunk_tokens))
        if rule.budget is None:
            return Admit(rule, cap, chunk)
        budget = rule.budget
        # Bites beyond the paper's run layered: the online model sizing them sees token-layers, not a chunk's
        # attention over its growing prefix, so big chunks would overrun the target.
        if self.predict_seconds is None or budget > self.tokens_per_group * view.num_layers:
            return Admit(rule, cap, chunk)
        tokens = min(cap, max(view.waiting.admissible_tokens, view.waiting.head_tokens))
        choice = choose_execution(self.predict_seconds, tokens, view.num_layers, budget, view.decode_rows,
                                  view.decode_context)
        if choice.kind == "chunked":
            return Admit(rule, min(cap, choice.chunk_tokens), choice.chunk_tokens, "chunked")
        return Admit(rule, cap, chunk)

    def _join(self, view: SchedulerView) -> Optional[Admit]:
        """A cohort joining the pipeline starts at group 0 of the shared partition: that slot must be free (every
        cohort in flight has moved past group 0), the pipeline must have a free stage, the head of the queue must
        fit the budget left beside the cohorts in flight, and joining must be sooner than waiting."""
        groups = view.cohorts[0].groups
        if (view.waiting.requests == 0 or len(view.cohorts) >= min(self.max_cohorts, len(groups))
                or any(c.next_group == 0 for c in view.cohorts)):
            return None
        cap = self.admission_token_cap(view)
        # SGLang admits the first waiting request even above the token cap: wait unless it fits.
        if cap < max(self.min_piece_tokens, view.waiting.head_tokens):
            return None
        if not (self.switches.eager_join or self._joining_is_sooner(view)):
            return None
        if view.chunking is not None:
            return replace(view.chunking, groups=GroupRule(shared=groups), token_cap=min(cap, view.chunking.chunk_tokens))
        return Admit(GroupRule(shared=groups), cap, self.chunk_tokens)

    def _joining_is_sooner(self, view: SchedulerView) -> bool:
        """A joiner runs every group of the shared partition; waiting (also on a tie: the queue then forms one
        cohort), it starts after the cohorts in flight finish and runs its own (shorter, for a short prompt)
        partition. Measured on the CPU engine: a 54-token prompt joining a 4-group partition at its last group
        took 4 iterations instead of 1 + 1, and the cohorts joining behind it kept the long partition alive."""
        shared = len(view.cohorts[0].groups)
        remaining = max(c.remaining_groups for c in view.cohorts)
        alone = replace(view, cohorts=())
        tokens = min(max(view.waiting.admissible_tokens, view.waiting.head_tokens), self.admission_token_cap(alone))
        own = len(budget_groups(tokens, view.num_layers, self.token_layer_budget(alone), self.layer_costs))
        return shared < remaining + own

    # -- budgets ----------------------------------------------------------------------------------------------
    def token_layer_budget(self, view: SchedulerView) -> float:
        """Prefill token-layers one iteration may carry next to this decode batch."""
        paper = float(self.tokens_per_group * view.num_layers)
        if not self.switches.adaptive or self.tbt_target_s is None:
            return paper
        budget = None
        if self.model.ready and self.model.coef[2] > 0:
            a, b, c = self.model.coef
            budget = max(0.0, (self.tbt_target_s - a - b * view.decode_rows) / c * view.num_layers)
        if self.predict_seconds is None:
            return paper if budget is None else budget
        # With the roofline model: never above what it predicts fits the target (the online model is linear in
        # token-layers and blind to a big prompt's quadratic attention), and its answer alone until measured
        # times identify the online model (with chunks of one size only, they never would).
        predicted = self._predicted_budget(view)
        budget = predicted if budget is None else min(budget, predicted)
        if budget > paper and not self._bigger_bites_pay(view, budget):
            return paper
        return budget

    def admission_token_cap(self, view: SchedulerView) -> int:
        """Most new prompt tokens the next cohort may bring: what fits in this iteration's prefill budget beside
        the cohorts in flight (alone: what fits at one layer per group), and in the activation-stash budget."""
        cap = float(1 << 62)
        if view.cohorts:
            g0 = view.cohorts[0].groups[0]
            cap = (self.token_layer_budget(view) - token_layers(next_pieces(view))) / (g0[1] - g0[0])
        elif self.switches.adaptive and not (self.switches.idle_whole and view.decode_rows == 0):
            # The paper admits every waiting prompt at once; past budget/1 tokens even one layer per group
            # overruns the iteration budget (a token-gap spike). Larger backlogs form the next cohorts.
            cap = self.token_layer_budget(view)
        if self.stash_budget_bytes is not None and self.stash_bytes_per_token > 0:
            used = sum(c.new_tokens for c in view.cohorts) * self.stash_bytes_per_token
            cap = min(cap, (self.stash_budget_bytes - used) / self.stash_bytes_per_token)
        return max(0, int(cap))

    def _bigger_bites_pay(self, view: SchedulerView, budget: float) -> bool:
        """Whether a bite beyond the paper's at least doubles prefill throughput (prompt tokens per iteration
        second). Where an iteration at the paper's bite is mostly fixed cost (MoE expert loads for the decode
        rows, per-iteration overhead) big bites amortise it; where it is mostly the bite's own flops (dense
        layers) they buy little and only trade decode latency for TTFT."""
        n, small = view.num_layers, self.tokens_per_group
        big = int(budget // n)

        def seconds_per_token(tokens):
            return self.predict_seconds(view.decode_rows, view.decode_context,
                                        (PromptWork(tokens, 0, (0, n)),)) / tokens
        return seconds_per_token(big) <= self.BITE_GAIN * seconds_per_token(small)

    def _predicted_budget(self, view: SchedulerView) -> float:
        """Largest full-depth prompt pass (in token-layers) the iteration cost model keeps within the target."""
        key = (view.num_layers, view.decode_rows, view.decode_context)
        if self._predicted_memo[0] != key:
            self._predicted_memo = (key, self._search_budget(view))
        return self._predicted_memo[1]

    def _search_budget(self, view: SchedulerView) -> float:
        def fits(tokens):
            pieces = (PromptWork(tokens, 0, (0, view.num_layers)),)
            return self.predict_seconds(view.decode_rows, view.decode_context, pieces) <= self.tbt_target_s
        lo, hi = 0, 1
        while fits(hi) and hi < 1 << 22:
            lo, hi = hi, hi * 2
        while hi - lo > max(1, lo // 64):  # within ~2%: the budget is a target, not a bound to the token
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return float(lo * view.num_layers)
