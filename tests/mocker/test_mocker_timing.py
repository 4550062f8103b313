"""The reference timing model: prefill and decode polynomials, KV transfer time."""

import pytest

from dynamo.mocker.timing import decode_ms, kv_transfer_ms, prefill_ms


def test_prefill_polynomial() -> None:
    assert prefill_ms(0) == 0.0
    assert prefill_ms(1) == pytest.approx(4.209989e-7 + 1.518344e-2 + 16.50142)
    assert prefill_ms(1000) == pytest.approx(0.4209989 + 15.18344 + 16.50142)
    assert prefill_ms(8192) == pytest.approx(4.209989e-7 * 8192**2 + 1.518344e-2 * 8192 + 16.50142)


def test_decode_polynomial() -> None:
    assert decode_ms(0.0) == pytest.approx(5.74)
    assert decode_ms(0.5) == pytest.approx(-25.74 * 0.25 + 54.01 * 0.5 + 5.74)
    assert decode_ms(1.0) == pytest.approx(-25.74 + 54.01 + 5.74)
    # p is a fraction: clamped to [0, 1]
    assert decode_ms(-3.0) == decode_ms(0.0)
    assert decode_ms(7.0) == decode_ms(1.0)
    # grows with cache occupancy
    assert decode_ms(0.1) < decode_ms(0.5) < decode_ms(0.9)


def test_kv_transfer_time() -> None:
    # 1000 tokens * 128 KiB at 64 GB/s = 2.048 ms
    assert kv_transfer_ms(1000, 131072, 64.0) == pytest.approx(2.048)
    assert kv_transfer_ms(1000, 131072, 0.0) == 0.0  # bandwidth 0: modelling off
    assert kv_transfer_ms(0, 131072, 64.0) == 0.0
