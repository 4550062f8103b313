"""The vLLM worker configures NIXL itself for every role (the guides start the decode side with no
role flag); ``--connector none`` opts an aggregated worker out; a user's config wins."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from dynamo.vllm.args import NIXL_CONNECTOR_MODULE, parse_args


@pytest.mark.parametrize(
    "flag", ["--is-prefill-worker", "--is-decode-worker", "--disaggregation-mode=agg", None]
)
def test_every_worker_gets_the_nixl_connector(flag: str | None):
    config = parse_args(["--model", "m", *([flag] if flag else [])])
    kv = config.engine_args.kv_transfer_config
    assert kv is not None
    assert (kv.kv_connector, kv.kv_role, kv.kv_load_failure_policy) == ("NixlConnector", "kv_both", "fail")
    if config.is_cpu:
        assert kv.kv_buffer_device == "cpu"
        assert kv.kv_connector_module_path == NIXL_CONNECTOR_MODULE


def test_a_worker_with_no_role_flag_takes_kv_transfers():
    """Changed with issue 10: the guides' disaggregated pattern starts the decode worker with no role
    flag; before, it got no connector and silently recomputed every prompt the prefill worker had
    computed. Now it has the connector and runs the decode step for requests that bring KV."""
    config = parse_args(["--model", "m"])
    assert config.disaggregation_mode == "agg" and config.has_kv_connector


def test_connector_none_opts_out_and_is_refused_for_a_role():
    assert parse_args(["--model", "m", "--connector", "none"]).engine_args.kv_transfer_config is None
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--is-decode-worker", "--connector", "none"])


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
