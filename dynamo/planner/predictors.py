"""Load predictors: one observed value per adjustment interval in (requests, ISL or OSL), the next
interval's value out.

Contract: ``add(value)`` after each interval, ``predict()`` for the next one (``None`` before the
first value; never negative). One predictor per series. ``create_predictor`` builds the configured
kind (``constant``, ``moving_average``, ``kalman``), wrapped in a log1p transform when
``load_predictor_log1p`` is set. ARIMA and Prophet are refused at configuration time
(``dynamo.planner.config``).

Journey: the planner's observe -> **predict** -> decide step.
"""

from __future__ import annotations

import abc
import math
from collections import deque

import numpy as np

from dynamo.planner.config import PlannerConfig


class LoadPredictor(abc.ABC):
    """Forecasts the next value of one series."""

    @abc.abstractmethod
    def add(self, value: float) -> None:
        """Record the value observed over the interval that just ended."""

    @abc.abstractmethod
    def predict(self) -> float | None:
        """The next interval's value (None before any value was added)."""


class ConstantPredictor(LoadPredictor):
    """The next interval repeats the last one."""

    def __init__(self) -> None:
        self._last: float | None = None

    def add(self, value: float) -> None:
        self._last = float(value)

    def predict(self) -> float | None:
        return self._last


class MovingAveragePredictor(LoadPredictor):
    """The mean of the last ``window`` values."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("a moving average needs a window of at least 1")
        self._values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self._values.append(float(value))

    def predict(self) -> float | None:
        if not self._values:
            return None
        return sum(self._values) / len(self._values)


class KalmanPredictor(LoadPredictor):
    """A local linear trend model (level + trend) filtered by a Kalman filter; the forecast is
    level + trend. Until ``min_points`` values were seen it forecasts the last value.

    State ``x = [level, trend]``, transition ``F = [[1, 1], [0, 1]]``, observation ``H = [1, 0]``,
    process noise ``diag(q_level, q_trend)``, measurement noise ``r``; the first value starts the
    state at ``[value, 0]`` with covariance ``diag(r, r)``.
    """

    _F = np.array([[1.0, 1.0], [0.0, 1.0]])
    _H = np.array([[1.0, 0.0]])

    def __init__(self, q_level: float, q_trend: float, r: float, min_points: int) -> None:
        self.q = np.diag([q_level, q_trend])
        self.r = float(r)
        self.min_points = min_points
        self.x: np.ndarray | None = None
        self.p: np.ndarray | None = None
        self.count = 0
        self._last = 0.0

    def add(self, value: float) -> None:
        y = float(value)
        self._last = y
        self.count += 1
        if self.x is None or self.p is None:
            self.x = np.array([y, 0.0])
            self.p = np.diag([self.r, self.r])
            return
        x = self._F @ self.x
        p = self._F @ self.p @ self._F.T + self.q
        s = float((self._H @ p @ self._H.T)[0, 0]) + self.r
        k = (p @ self._H.T)[:, 0] / s
        self.x = x + k * (y - x[0])
        self.p = (np.eye(2) - np.outer(k, self._H[0])) @ p

    def predict(self) -> float | None:
        if self.x is None:
            return None
        if self.count < self.min_points:
            return self._last
        return max(0.0, float(self.x[0] + self.x[1]))


class Log1pPredictor(LoadPredictor):
    """Runs ``inner`` on ``log1p(value)`` and returns ``expm1`` of its forecast."""

    def __init__(self, inner: LoadPredictor) -> None:
        self.inner = inner

    def add(self, value: float) -> None:
        self.inner.add(math.log1p(max(0.0, value)))

    def predict(self) -> float | None:
        p = self.inner.predict()
        return None if p is None else max(0.0, math.expm1(p))


def create_predictor(config: PlannerConfig) -> LoadPredictor:
    """The predictor ``config.load_predictor`` names (one per forecast series)."""
    kind = config.load_predictor
    predictor: LoadPredictor
    if kind == "constant":
        predictor = ConstantPredictor()
    elif kind == "moving_average":
        predictor = MovingAveragePredictor(config.moving_average_window)
    elif kind == "kalman":
        predictor = KalmanPredictor(
            config.kalman_q_level, config.kalman_q_trend, config.kalman_r, config.kalman_min_points
        )
    else:
        raise ValueError(f"load_predictor {kind!r} is not built (see dynamo.planner.config)")
    return Log1pPredictor(predictor) if config.load_predictor_log1p else predictor
