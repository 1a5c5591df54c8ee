"""TP=2 on CPU: both scheduler ranks run layered prefill and give TP=1 stock SGLang's tokens."""

import os

import pytest

import sgl_layered
from sgl_layered import cpu
from sgl_layered.models import get_preset
from trace_checks import read
from workload import PROMPT_LENGTHS, prompts, run_staggered


@pytest.mark.engine
def test_tp2_layered_matches_tp1_stock(model_path, stock_reference, monkeypatch):
    monkeypatch.setenv("SGLANG_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), tp_size=2, enable_layered_prefill=True,
                                layered_prefill_groups=3, **cpu.engine_kwargs())
    try:
        infos = engine._scheduler_init_result.scheduler_infos
        outputs = run_staggered(engine, prompts())
    finally:
        engine.shutdown()
    assert len(infos) == 2 and all(i["sgl_layered"]["layered"] for i in infos)
    assert outputs == stock_reference("tiny-qwen3-moe")["outputs"]


@pytest.mark.engine
def test_tp2_adaptive_policy_with_tbt_target_decides_alike_on_both_ranks(model_path, stock_reference, tmp_path,
                                                                          monkeypatch):
    """Our policy with a TBT target fits its cost model to measured iteration times, which differ between ranks.
    Only the TP leader's measurements reach the policy, on every rank alike (through SGLang's request broadcast),
    so both ranks run the same schedule: no hang, identical per-rank traces, TP=1 stock's tokens."""
    monkeypatch.setenv("SGLANG_CPU_OMP_THREADS_BIND", "0|1")
    trace = tmp_path / "trace.jsonl"
    engine = sgl_layered.Engine(model_path=model_path("tiny-qwen3-moe"), tp_size=2, enable_layered_prefill=True,
                                layered_prefill_policy="adaptive", layered_prefill_tbt_target_ms=200,
                                layered_prefill_switches="adaptive,pipeline,stash",  # the budget from measurements
                                layered_prefill_trace=str(trace), **cpu.engine_kwargs())
    try:
        outputs = run_staggered(engine, prompts(), gap_s=0.05)
        # More prompts once the cost model has measurements to fit: their admissions use its budget.
        for seed in (99, 98):
            run_staggered(engine, prompts(seed=seed, lengths=PROMPT_LENGTHS), gap_s=0.05)
    finally:
        engine.shutdown()
    assert outputs == stock_reference("tiny-qwen3-moe")["outputs"]
    ranks = [read(trace), read(f"{trace}.tp1")]

    def schedule(rows):  # every decision, to the bit: layer ranges, admitted requests, caps and group rules
        return [(r["iter"], r["mode"], r["decode_rows"], r.get("admit"),
                 [(sorted(p["rids"]), p["tokens"], p["layers"]) for p in r["prefill"]]) for r in rows]
    assert ranks[0] and schedule(ranks[0]) == schedule(ranks[1])
    budgets = {r["admit"]["groups"]["budget"] for r in ranks[0] if r.get("admit")}
    paper = 512 * get_preset("tiny-qwen3-moe").num_layers
    assert budgets - {paper}, "the measured cost model never set a budget: the test would exercise nothing"
