"""Disaggregation timeouts from the environment: a value that is not a positive number stops the
process at start with the variable named, instead of being ignored."""

from __future__ import annotations

import pytest

from dynamo.llm.disagg import DEFAULT_PREFILL_TIMEOUT_S, DisaggTimeouts


def test_unset_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_PREFILL_TIMEOUT", raising=False)
    monkeypatch.delenv("DYN_KV_TRANSFER_TIMEOUT", raising=False)
    assert DisaggTimeouts.from_env().prefill_s == DEFAULT_PREFILL_TIMEOUT_S


def test_a_number_of_seconds_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_PREFILL_TIMEOUT", "2.5")
    monkeypatch.setenv("DYN_KV_TRANSFER_TIMEOUT", "7")
    timeouts = DisaggTimeouts.from_env()
    assert (timeouts.prefill_s, timeouts.transfer_s) == (2.5, 7.0)


@pytest.mark.parametrize("name", ["DYN_PREFILL_TIMEOUT", "DYN_KV_TRANSFER_TIMEOUT"])
@pytest.mark.parametrize("raw", ["60s", "0", "-1", "nan"])
def test_a_bad_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        DisaggTimeouts.from_env()
