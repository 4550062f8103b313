"""Load predictors against values worked out by hand (the Kalman filter's first steps included)."""

from __future__ import annotations

import math

import pytest

from dynamo.planner.config import PlannerConfig
from dynamo.planner.predictors import (
    ConstantPredictor,
    KalmanPredictor,
    Log1pPredictor,
    MovingAveragePredictor,
    create_predictor,
)


def test_constant_repeats_the_last_value() -> None:
    p = ConstantPredictor()
    assert p.predict() is None
    p.add(3)
    p.add(5)
    assert p.predict() == 5


def test_moving_average_over_its_window() -> None:
    p = MovingAveragePredictor(3)
    assert p.predict() is None
    for v in (1, 2, 3, 4):
        p.add(v)
    assert p.predict() == pytest.approx((2 + 3 + 4) / 3)
    with pytest.raises(ValueError):
        MovingAveragePredictor(0)


def test_kalman_first_steps_by_hand() -> None:
    # q_level 1, q_trend 0.1, r 10; first value 10 -> x = [10, 0], P = diag(10, 10).
    p = KalmanPredictor(q_level=1.0, q_trend=0.1, r=10.0, min_points=1)
    p.add(10)
    assert p.predict() == 10
    # Predict: P = F P F' + Q = [[21, 10], [10, 10.1]]; S = 21 + 10 = 31; K = [21/31, 10/31];
    # innovation 12 - 10 = 2 -> level 10 + 42/31, trend 20/31; forecast = 10 + 62/31 = 12.
    p.add(12)
    assert p.predict() == pytest.approx(12.0)
    assert p.x is not None
    assert p.x[0] == pytest.approx(10 + 42 / 31) and p.x[1] == pytest.approx(20 / 31)
    # P = (I - K H) P_pred = [[210/31, 100/31], [100/31, 10.1 - 100/31]]; the next P_pred[0,0] is
    # 210/31 + 2*100/31 + 10.1 - 100/31 + 1 = 21.1 and P_pred[1,0] = 100/31 + 10.1 - 100/31 = 10.1,
    # S = 31.1; the forecast was 12, the value 14: level += 2*21.1/31.1, trend += 2*10.1/31.1.
    p.add(14)
    expected = 12 + 20 / 31 + 2 * 21.1 / 31.1 + 2 * 10.1 / 31.1
    assert p.predict() == pytest.approx(expected)


def test_kalman_repeats_the_last_value_until_min_points() -> None:
    p = KalmanPredictor(q_level=1.0, q_trend=0.1, r=10.0, min_points=3)
    p.add(10)
    p.add(20)
    assert p.predict() == 20
    p.add(30)
    forecast = p.predict()
    assert forecast is not None and forecast != 30 and forecast > 20  # the filter's forecast from here on


def test_kalman_never_forecasts_a_negative_load() -> None:
    p = KalmanPredictor(q_level=1.0, q_trend=1.0, r=0.1, min_points=1)
    for v in (100, 50, 0, 0):
        p.add(v)
    assert p.predict() == 0.0


def test_kalman_follows_a_ramp_better_than_the_constant() -> None:
    kalman, constant = KalmanPredictor(1.0, 0.1, 10.0, 5), ConstantPredictor()
    for v in range(0, 200, 10):
        kalman.add(v)
        constant.add(v)
    nxt = 200
    assert abs((kalman.predict() or 0) - nxt) < abs((constant.predict() or 0) - nxt)


def test_log1p_wraps_any_predictor() -> None:
    p = Log1pPredictor(MovingAveragePredictor(2))
    p.add(math.e - 1)  # log1p -> 1
    p.add(math.e**3 - 1)  # log1p -> 3
    assert p.predict() == pytest.approx(math.e**2 - 1)  # expm1(mean 2)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("constant", ConstantPredictor),
        ("moving_average", MovingAveragePredictor),
        ("kalman", KalmanPredictor),
    ],
)
def test_create_predictor_builds_the_configured_kind(name: str, kind: type) -> None:
    config = PlannerConfig(environment="virtual", load_predictor=name)
    assert isinstance(create_predictor(config), kind)
    wrapped = create_predictor(config.model_copy(update={"load_predictor_log1p": True}))
    assert isinstance(wrapped, Log1pPredictor) and isinstance(wrapped.inner, kind)
