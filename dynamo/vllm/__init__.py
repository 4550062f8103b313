"""vLLM engine worker: ``args`` (command line), ``engine`` (in-process vLLM behind ``generate``),
``kv_events`` (vLLM's KV events in our terms), ``metrics`` (load and ``vllm:*`` Prometheus metrics),
``cpu`` (core binding on the CPU build), ``nixl_connector`` (the CPU NIXL connector's core fix),
``nixl_agent`` (a NIXL agent whose progress thread sleeps until UCX has work, so a read completes
without the remote engine stepping).
``main`` hands ``VllmEngine`` to the worker base (``dynamo.worker.run_worker``).

Journey: request plane -> **engine worker** -> token ids back.
"""
