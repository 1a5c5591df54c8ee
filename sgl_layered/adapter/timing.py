"""Iteration time as the device experienced it, for the adaptive policy's online cost model.

GPU work is asynchronous: `run_batch` returns once the forward is launched, so a host timer around it measures
launch time (on a GPU the cost model would then learn a slope of ~0 and its token-layer budget would explode). The
clock starts when the batch is launched and stops after SGLang has processed the results, which waits for the
device (`next_token_ids.tolist()`); where SGLang does not wait (a cohort pass with nothing decoding and nothing to
sample), the clock waits for the device itself. On CPU everything is synchronous and this is wall time.
"""

from __future__ import annotations

import time
from typing import Callable, Optional


class IterationClock:
    def __init__(self, wait_for_device: Callable[[], None], now: Callable[[], float] = time.perf_counter):
        self._wait, self._now = wait_for_device, now
        self._started: Optional[float] = None

    def start(self) -> None:
        self._started = self._now()

    def stop(self) -> Optional[float]:
        """Seconds since start, once the device has finished the iteration (None if the clock was not started)."""
        if self._started is None:
            return None
        self._wait()
        seconds, self._started = self._now() - self._started, None
        return seconds


def device_waiter(device) -> Callable[[], None]:
    """Blocks until the device's current stream has finished its queued work (a no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.current_stream(torch.device(device)).synchronize
    return lambda: None
