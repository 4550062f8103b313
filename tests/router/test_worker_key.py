import pytest

from dynamo.router.worker_key import format_worker_key, split_worker_key, worker_key


def test_rank_zero_key_is_the_instance_id() -> None:
    assert worker_key(0xDEADBEEF) == 0xDEADBEEF
    assert split_worker_key(0xDEADBEEF) == (0xDEADBEEF, 0)


def test_ranks_get_distinct_keys_that_split_back() -> None:
    instance = (1 << 64) - 1
    keys = {worker_key(instance, rank) for rank in range(4)}
    assert len(keys) == 4
    assert {split_worker_key(k) for k in keys} == {(instance, rank) for rank in range(4)}
    assert format_worker_key(worker_key(0xAB, 2)) == "ab/2"


def test_out_of_range_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        worker_key(1 << 64)
    with pytest.raises(ValueError):
        worker_key(-1)
    with pytest.raises(ValueError):
        worker_key(5, -1)
