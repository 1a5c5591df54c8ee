"""Energy: the simulator's modelled dynamic energy (per-byte and per-FLOP figures of the hardware profile), the
best-tuned chunked baseline's selection, and the live benchmark's NVML energy meter (its no-GPU branch here)."""

import dataclasses
import sys
import types
from pathlib import Path

import pytest

from sgl_layered.analysis import workloads
from sgl_layered.core.execution import PromptWork
from sgl_layered.core.hardware import CPU_CALIBRATED, H100, H200_MEASURED, PROFILES
from sgl_layered.core.roofline import CostModel
from sgl_layered.core.shapes import MODELS
from sgl_layered.sim.engine import Simulator
from sgl_layered.sim.sweep import (Scenario, best_tuned_chunked, energy_summary, make_requests, policy_factory,
                                   simulate, slo_crossing)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import load  # noqa: E402

QWEN = MODELS["Qwen3-30B-A3B"]
KV = 700_000


def _cost(hw=H100):
    return CostModel(QWEN, hw, tp=2, alpha=1.3, overhead_s=0.002)


def _scenario(requests=40):
    return Scenario(workloads.arxiv(), 10.0, 0.125, requests=requests)


def test_gpu_profiles_state_their_energy_figures_and_the_cpu_profile_none():
    for hw in (PROFILES["H100-SXM"], PROFILES["H200-SXM"], H200_MEASURED):
        assert hw.has_energy and "O'Connor" in hw.energy_source and "upper bound" in hw.energy_source
        assert hw.j_per_byte == pytest.approx(3.9e-12 * 8)
        assert hw.j_per_flop == pytest.approx(700.0 / hw.flops)  # TDP / peak: an upper bound per FLOP
    assert not CPU_CALIBRATED.has_energy and CPU_CALIBRATED.dynamic_energy_j(1e9, 1e9) is None
    run = simulate(CostModel(MODELS["bench-qwen3-moe"], CPU_CALIBRATED), "chunked-512",
                   Scenario(workloads.sharegpt(), 5.0, 1.0, requests=5), 1.0)
    assert run["energy"] is None and run["hbm_bytes"] > 0


def test_zero_work_costs_zero_dynamic_energy():
    cost = _cost()
    idle = cost.iteration([], [])
    assert idle.hbm_bytes == idle.flops == 0.0
    assert H100.dynamic_energy_j(idle.hbm_bytes, idle.flops)["dynamic_J"] == 0.0
    res = Simulator(cost, "chunked").run([])
    assert res.hbm_bytes == res.flops == 0.0
    assert energy_summary(H100, res.hbm_bytes, res.flops, res.expert_bytes, 0)["dynamic_J"] == 0.0


def test_iteration_bytes_and_flops_count_every_tp_rank():
    work = ([2000] * 16, [PromptWork(1024, 0, (0, QWEN.layers))])
    one, two = CostModel(QWEN, H100, tp=1), CostModel(QWEN, H100, tp=2)
    a, b = one.iteration(*work), two.iteration(*work)
    assert b.hbm_bytes == pytest.approx(a.hbm_bytes) and b.flops == pytest.approx(a.flops)
    assert a.hbm_bytes > a.expert_bytes > 0 and a.flops > 0


class _Spy:
    """A cost model that records every iteration cost it hands the simulator."""

    def __init__(self, cost):
        self.inner, self.costs = cost, []
        self.m, self.hw = cost.m, cost.hw

    def iteration(self, *a):
        c = self.inner.iteration(*a)
        self.costs.append(c)
        return c

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("mode", ["chunked", "layered"])
def test_energy_is_additive_over_iterations(mode):
    sc = _scenario()
    spy = _Spy(_cost())
    policy = policy_factory("layered-paper", sc)() if mode == "layered" else None
    res = Simulator(spy, mode, policy=policy, kv_capacity_tokens=KV).run(make_requests(sc, 2.0))
    assert len(spy.costs) == res.iterations > 0
    assert res.hbm_bytes == pytest.approx(sum(c.hbm_bytes for c in spy.costs))
    assert res.flops == pytest.approx(sum(c.flops for c in spy.costs))
    total = H100.dynamic_energy_j(res.hbm_bytes, res.flops)["dynamic_J"]
    assert total == pytest.approx(sum(H100.dynamic_energy_j(c.hbm_bytes, c.flops)["dynamic_J"] for c in spy.costs))


def test_layered_moves_fewer_expert_bytes_so_less_byte_energy_than_chunked():
    cost, sc = _cost(), _scenario()
    chunked = simulate(cost, "chunked-512", sc, 2.0, kv_capacity_tokens=KV)
    layered = simulate(cost, "layered-paper", sc, 2.0, kv_capacity_tokens=KV)
    assert layered["expert_bytes"] < chunked["expert_bytes"]
    assert layered["energy"]["expert_byte_J"] < chunked["energy"]["expert_byte_J"]
    assert layered["energy"]["byte_J"] < chunked["energy"]["byte_J"]
    # Same requests, same tokens: the arithmetic barely differs, the bytes do.
    assert layered["energy"]["output_tokens"] == chunked["energy"]["output_tokens"]
    assert layered["flops"] == pytest.approx(chunked["flops"], rel=1e-3)
    assert layered["energy"]["mJ_per_output_token"] < chunked["energy"]["mJ_per_output_token"]


def test_energy_per_token_scales_linearly_with_the_figures():
    sc = _scenario(20)
    base = simulate(_cost(), "layered-paper", sc, 2.0, kv_capacity_tokens=KV)
    bytes2 = simulate(_cost(dataclasses.replace(H100, j_per_byte=2 * H100.j_per_byte)), "layered-paper", sc, 2.0,
                      kv_capacity_tokens=KV)
    both3 = simulate(_cost(dataclasses.replace(H100, j_per_byte=3 * H100.j_per_byte, j_per_flop=3 * H100.j_per_flop)),
                     "layered-paper", sc, 2.0, kv_capacity_tokens=KV)
    assert bytes2["busy_s"] == base["busy_s"]  # the figures change no schedule
    e0, e2, e3 = base["energy"], bytes2["energy"], both3["energy"]
    assert e2["byte_mJ_per_output_token"] == pytest.approx(2 * e0["byte_mJ_per_output_token"])
    assert e2["flop_mJ_per_output_token"] == pytest.approx(e0["flop_mJ_per_output_token"])
    assert e3["mJ_per_output_token"] == pytest.approx(3 * e0["mJ_per_output_token"])


def _run(rate, attainment):
    return {"rate": rate, "slo_attainment": attainment, "slo_met": attainment >= 0.9, "slo_goal": 0.9}


def test_slo_crossing_interpolates_between_grid_rates():
    assert slo_crossing([_run(2, 1.0), _run(4, 0.5)]) == {"rate": pytest.approx(2.4), "censored": False}
    assert slo_crossing([_run(2, 1.0), _run(4, 0.95)]) == {"rate": 4, "censored": True}
    assert slo_crossing([_run(2, 0.5)]) == {"rate": 0.0, "censored": False}


def test_best_tuned_chunked_picks_the_chunk_with_the_highest_slo_rate():
    sc, rates = _scenario(60), [1, 2, 4, 8]
    best = best_tuned_chunked(_cost(), sc, rates, chunks=(64, 512, 2048), kv_capacity_tokens=KV)
    by = {c: v["max_slo_rate"] for c, v in best["by_chunk"].items()}
    assert best["max_slo_rate"] == max(by.values()) == by[best["best_chunk"]]
    assert by[64] < by[best["best_chunk"]]  # 64-token chunks cannot keep up with arXiv-like prompts


def test_energy_meter_records_why_on_a_cpu_run(monkeypatch):
    monkeypatch.setattr(load.EnergyMeter, "_cuda_available", staticmethod(lambda: False))
    with load.EnergyMeter() as meter:
        pass
    assert meter.result == {"measured": False, "why": "no GPU (CPU run)"}
    assert meter.per_output_token(100) is None


def test_energy_meter_without_pynvml(monkeypatch):
    monkeypatch.setattr(load.EnergyMeter, "_cuda_available", staticmethod(lambda: True))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with load.EnergyMeter() as meter:
        pass
    assert meter.result["measured"] is False and "pynvml" in meter.result["why"]


def test_energy_meter_sums_nvml_counters(monkeypatch):
    """The measuring branch against a stand-in NVML: counters in mJ, differences summed over visible GPUs."""
    counters = {0: 1_000_000, 1: 5_000_000, 2: 0}
    fake = types.SimpleNamespace(
        NVMLError=RuntimeError, nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 3,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetTotalEnergyConsumption=lambda h: counters[h])
    monkeypatch.setattr(load.EnergyMeter, "_cuda_available", staticmethod(lambda: True))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with load.EnergyMeter() as meter:
        counters[0] += 250_000  # 250 J
        counters[1] += 750_000  # 750 J
        counters[2] += 999_000  # not visible
    assert meter.result["measured"] is True
    assert meter.result["per_gpu_J"] == [250.0, 750.0] and meter.result["joules"] == 1000.0
    assert meter.per_output_token(500) == 2.0


def test_a_cohort_of_prompts_costs_the_same_flops_as_chunking_them():
    """Prompts batched into one cohort attend within themselves only: over a run, layered and chunked prefill of
    the same requests compute the same FLOPs (same tokens, same causal attention), whatever the cohorts hold."""
    cost, sc = _cost(), Scenario(workloads.sharegpt(), 5.0, 0.125, requests=150)
    chunked = simulate(cost, "chunked-512", sc, 12.0, kv_capacity_tokens=KV)
    layered = simulate(cost, "layered-paper", sc, 12.0, kv_capacity_tokens=KV)
    assert layered["iterations"] and layered["prefill_tokens"] == chunked["prefill_tokens"]
    assert layered["flops"] == pytest.approx(chunked["flops"], rel=1e-3)
