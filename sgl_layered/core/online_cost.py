"""A per-iteration time model fitted online to measured iterations (the adaptive policy's TBT target)."""

from __future__ import annotations

from typing import List, Optional, Tuple

from .step import Measurement


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

    def observe(self, m: Measurement) -> None:
        sample = (float(m.decode_rows), m.token_layers / max(m.num_layers, 1), m.seconds)
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
