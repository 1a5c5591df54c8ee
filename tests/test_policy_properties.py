"""Policy invariants over random arrival sequences (hypothesis), driven through the simulator."""

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_layered.core.adaptive import AdaptivePolicy, Switches
from sgl_layered.core.hardware import H100
from sgl_layered.core.paper import PaperPolicy
from sgl_layered.core.partition import split_layers
from sgl_layered.core.roofline import CostModel
from sgl_layered.core.shapes import MODELS
from sgl_layered.core.step import CohortState, SchedulerView, Waiting, split_by_cost
from sgl_layered.sim.engine import SimRequest, Simulator

COST = CostModel(MODELS["Qwen3-30B-A3B"], H100, tp=2, alpha=1.3, overhead_s=0.002)
DENSE = CostModel(MODELS["Qwen3-8B"], H100, tp=1, overhead_s=0.002)  # where chunked execution gets chosen

requests = st.lists(st.tuples(st.floats(0.0, 0.3), st.integers(1, 6000), st.integers(1, 40)), min_size=1, max_size=25)
policies = st.sampled_from(["paper", "paper-G3", "adaptive", "adaptive-eager-join", "adaptive-target",
                            "adaptive-no-pipeline", "paper-hybrid-700", "adaptive-choose-moe", "adaptive-choose-dense"])


def make(policy):
    """(policy, cost model, hybrid chunk tokens)"""
    return {
        "paper": lambda: (PaperPolicy(), COST, None),
        "paper-G3": lambda: (PaperPolicy(groups=3), COST, None),
        "adaptive": lambda: (AdaptivePolicy(), COST, None),
        "adaptive-eager-join": lambda: (AdaptivePolicy(switches=Switches(eager_join=True)), COST, None),
        "adaptive-target": lambda: (AdaptivePolicy(tbt_target_s=0.05), COST, None),
        "adaptive-no-pipeline": lambda: (AdaptivePolicy(switches=Switches(pipeline=False)), COST, None),
        "paper-hybrid-700": lambda: (PaperPolicy(chunk_tokens=700), COST, 700),
        "adaptive-choose-moe": lambda: (AdaptivePolicy(tbt_target_s=0.1, predict_seconds=COST.seconds), COST, None),
        "adaptive-choose-dense": lambda: (AdaptivePolicy(tbt_target_s=0.1, predict_seconds=DENSE.seconds), DENSE,
                                          None),
    }[policy]()


@settings(max_examples=60, deadline=None)
@given(reqs=requests, policy=policies)
def test_layered_schedule_invariants(reqs, policy):
    t, sim_reqs = 0.0, []
    for i, (gap, prompt, output) in enumerate(reqs):
        t += gap
        sim_reqs.append(SimRequest(i, t, prompt, output))
    policy_obj, cost, hybrid_chunk = make(policy)
    sim = Simulator(cost, "layered", policy=policy_obj, record=True)
    result = sim.run(sim_reqs)
    n = cost.m.layers
    # Every request got all its tokens, first token after arrival, gaps non-negative.
    for r in result.requests:
        assert r.done is not None and len(r.token_times) == r.output
        assert r.first_token >= r.arrival
    by_cohort, cohort_tokens = defaultdict(list), {}
    for step, (time_, decode_rows, pieces, _) in enumerate(sim.log):
        ranges = sorted(layers for _, layers, _ in pieces)
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])), "pieces overlap in layers"
        for cid, layers, tokens in pieces:
            by_cohort[cid].append((step, layers))
            cohort_tokens[cid] = tokens
            if hybrid_chunk:
                assert tokens <= hybrid_chunk, "a hybrid cohort carries at most one chunk"
        if policy in ("adaptive", "adaptive-eager-join") and len(pieces) > 1:
            # A pipelined cohort is only admitted within the iteration's prefill budget (the paper's work).
            assert sum(tok * (lay[1] - lay[0]) for _, lay, tok in pieces) <= 512 * n
    for cid, steps in by_cohort.items():
        layers = [i for _, (lo, hi) in steps for i in range(lo, hi)]
        assert layers == list(range(n)), f"cohort {cid} ran layers {layers}"  # none skipped or repeated, in order
        idx = [s for s, _ in steps]
        assert idx == list(range(idx[0], idx[0] + len(idx))), "a cohort's passes run in consecutive iterations"
    # Every prompt token is prefilled exactly once, whether prompts ran whole, chunked or layered.
    assert sum(cohort_tokens.values()) == sum(r.prompt for r in result.requests)


def test_split_by_cost_balances_dense_first_layer():
    costs = [4.0] + [1.0] * 11
    ranges = split_by_cost(costs, 3)
    assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(12))
    assert [sum(costs[lo:hi]) for lo, hi in ranges] == [5.0, 5.0, 5.0]  # by count it would be 7, 4, 4
    assert ranges[0] == (0, 2)


def _view_beside(cohort_next_group, head, waiting_tokens):
    """An 8-layer model, two requests decoding, one 1700-token cohort in four 2-layer groups in flight."""
    a = CohortState(0, 1700, ((0, 2), (2, 4), (4, 6), (6, 8)), cohort_next_group)
    return SchedulerView(8, decode_rows=2, decode_context=400, cohorts=(a,), waiting=Waiting(2, head, waiting_tokens))


def test_short_prompt_waits_instead_of_joining_a_longer_partition():
    """A 54-token prompt fits beside A's last group, but joining would take it through A's four groups; waiting,
    it runs whole right after A: first token after 1 + 1 iterations instead of 4. eager_join joins anyway."""
    view = _view_beside(3, 54, 54)
    assert AdaptivePolicy().admission_token_cap(view) >= 54  # the budget is not what holds it back
    assert AdaptivePolicy().schedule(view).admit is None
    assert AdaptivePolicy(switches=Switches(eager_join=True)).schedule(view).admit is not None


def test_prompt_joins_when_waiting_would_finish_later():
    """Behind A's second group with 2000 tokens queued: waiting means 3 more iterations of A, then the queue's own
    4 groups (7); joining now gives the head its first token after A's 4."""
    joined = AdaptivePolicy().schedule(_view_beside(1, 300, 2000)).admit
    assert joined is not None and joined.groups.shared == ((0, 2), (2, 4), (4, 6), (6, 8))
    assert AdaptivePolicy().schedule(_view_beside(1, 300, 300)).admit is None  # alone: 3 + 1, a tie waits


@given(tokens=st.integers(1, 512 * 8), layers=st.integers(1, 94))
def test_adaptive_groups_stay_within_the_budget_and_are_fewest(tokens, layers):
    """No pass of a cohort that fits the budget carries more than the paper's per-iteration work (512 tokens through
    every layer), and one group fewer would overrun it."""
    budget = 512 * layers
    if tokens > budget:
        return
    groups = AdaptivePolicy().schedule(SchedulerView(layers, decode_rows=2)).admit.groups.split(tokens, layers)
    assert [i for lo, hi in groups for i in range(lo, hi)] == list(range(layers))
    assert max(hi - lo for lo, hi in groups) * tokens <= budget
    if len(groups) > 1:
        fewer = split_layers(layers, len(groups) - 1)
        assert max(hi - lo for lo, hi in fewer) * tokens > budget
