"""vLLM engine worker: ``args`` (command line), ``engine`` (in-process vLLM behind ``generate``),
``kv_publisher`` (KV events for the router), ``metrics`` (load and ``vllm:*`` Prometheus metrics),
``cpu`` (core binding on the CPU build). ``main`` wires them to the runtime.

Journey: request plane -> **engine worker** -> token ids back.
"""
