"""Iteration times for the adaptive policy's online cost model are the device's, not the host's launch times.

A fake asynchronous device: launching an iteration costs the host 1 ms and queues the iteration's real work on the
device; the host only waits where it synchronises. The iteration clock stops after the device has finished (where
SGLang's result processing waits, or by waiting itself), so the cost model learns the device's time per decode row
and per prompt token-layer; a host timer around the launch (what GPU code measures without synchronising) learns
nothing and would let the budget explode.
"""

import pytest

from sgl_layered.adapter.timing import IterationClock
from sgl_layered.core.adaptive import AdaptivePolicy
from sgl_layered.core.step import Measurement, SchedulerView

LAYERS = 8
DEVICE_A, DEVICE_B, DEVICE_C = 0.004, 0.0005, 2e-6  # device seconds: fixed, per decode row, per token-layer / N


class FakeDevice:
    def __init__(self):
        self.now = 0.0  # simulated wall clock
        self.busy_until = 0.0

    def launch(self, decode_rows, token_layers):
        self.now += 0.001  # the host's launch cost
        work = DEVICE_A + DEVICE_B * decode_rows + DEVICE_C * token_layers / LAYERS
        self.busy_until = max(self.busy_until, self.now) + work

    def wait(self):
        self.now = max(self.now, self.busy_until)


def _learn(wait_for_device: bool) -> AdaptivePolicy:
    device = FakeDevice()
    clock = IterationClock(device.wait if wait_for_device else (lambda: None), now=lambda: device.now)
    policy = AdaptivePolicy(tbt_target_s=0.05)
    for i in range(40):
        rows, token_layers = 4 + (i * 7) % 40, (i * 997) % 4096 * LAYERS
        clock.start()
        device.launch(rows, token_layers)
        policy.observe(Measurement(rows, token_layers, LAYERS, clock.stop()))
        device.wait()  # the next iteration starts once this one's results are in (the non-overlap loop)
    return policy


def test_cost_model_learns_device_time_not_launch_time():
    a, b, c = _learn(wait_for_device=True).model.coef
    assert a == pytest.approx(DEVICE_A + 0.001, rel=1e-6)  # the launch is part of the iteration's wall time
    assert b == pytest.approx(DEVICE_B, rel=1e-6) and c == pytest.approx(DEVICE_C, rel=1e-6)
    view = SchedulerView(LAYERS, decode_rows=16)
    budget = _learn(wait_for_device=True).token_layer_budget(view)
    assert budget == pytest.approx((0.05 - DEVICE_A - 0.001 - DEVICE_B * 16) / DEVICE_C * LAYERS, rel=1e-6)


def test_a_launch_timer_would_learn_nothing():
    launch_only = _learn(wait_for_device=False)
    assert launch_only.model.coef is None or launch_only.model.coef[2] < 1e-9  # no slope: the budget runs away
