"""A status write carries the whole verdict, whatever the writer read before."""

from __future__ import annotations

from dynamo.operator.apply import merge_patch, status_patch


def test_state_and_conditions_go_out_together_even_from_a_stale_read() -> None:
    stale = {"state": "successful", "conditions": [{"type": "Ready", "status": "True"}], "old": 1}
    new = {"state": "successful", "conditions": [{"type": "Ready", "status": "True"}]}
    # A diff against a stale read leaves out what looked unchanged; the server may hold otherwise.
    assert merge_patch(stale, new) == {"old": None}
    assert status_patch(stale, new) == {**new, "old": None}
