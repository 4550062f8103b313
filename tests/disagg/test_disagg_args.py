"""The vLLM worker configures NIXL itself for prefill and decode roles; a user's config wins."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from dynamo.vllm.args import NIXL_CONNECTOR_MODULE, parse_args


@pytest.mark.parametrize("flag", ["--is-prefill-worker", "--is-decode-worker"])
def test_prefill_and_decode_workers_get_the_nixl_connector(flag: str):
    config = parse_args(["--model", "m", flag])
    kv = config.engine_args.kv_transfer_config
    assert kv is not None
    assert (kv.kv_connector, kv.kv_role, kv.kv_load_failure_policy) == ("NixlConnector", "kv_both", "fail")
    if config.is_cpu:
        assert kv.kv_buffer_device == "cpu"
        assert kv.kv_connector_module_path == NIXL_CONNECTOR_MODULE


def test_aggregated_workers_get_no_connector():
    assert parse_args(["--model", "m"]).engine_args.kv_transfer_config is None


def test_a_user_given_kv_transfer_config_wins():
    config = parse_args(
        [
            "--model",
            "m",
            "--is-decode-worker",
            "--kv-transfer-config",
            '{"kv_connector":"NixlConnector","kv_role":"kv_consumer","kv_load_failure_policy":"recompute"}',
        ]
    )
    kv = config.engine_args.kv_transfer_config
    assert kv is not None
    assert (kv.kv_role, kv.kv_load_failure_policy, kv.kv_connector_module_path) == (
        "kv_consumer",
        "recompute",
        None,
    )
