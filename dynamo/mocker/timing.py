"""The mocker's timing model: how long a simulated forward pass takes.

Journey: engine stage. The scheduler builds a step (prefill chunks + decode tokens), these
functions price it, and the engine loop sleeps that long (divided by the speedup ratios).
The polynomials are the reference mocker's (NVIDIA Dynamo 1.6.1), so our timings stay comparable.
"""

from __future__ import annotations


def prefill_ms(new_tokens: int) -> float:
    """Prefill time in ms of a step that computes ``new_tokens`` uncached prompt tokens."""
    if new_tokens <= 0:
        return 0.0
    t = float(new_tokens)
    return 4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142


def decode_ms(active_fraction: float) -> float:
    """Decode step time in ms, ``active_fraction`` = active KV tokens / total KV tokens (clamped
    to [0, 1]); at least 1 ms."""
    p = min(max(active_fraction, 0.0), 1.0)
    return max(-25.74 * p * p + 54.01 * p + 5.74, 1.0)


def kv_transfer_ms(num_tokens: int, bytes_per_token: int, bandwidth_gb_s: float) -> float:
    """Time in ms to move ``num_tokens`` tokens of KV cache at ``bandwidth_gb_s`` (1e9 bytes/s);
    0 when the bandwidth is 0 (transfer modelling off)."""
    if bandwidth_gb_s <= 0 or num_tokens <= 0:
        return 0.0
    return num_tokens * bytes_per_token / (bandwidth_gb_s * 1e9) * 1000.0
