"""TensorRT-LLM engine worker: ``args`` (command line and LLM-API options), ``engine`` (the
in-process ``tensorrt_llm.LLM`` behind ``generate``), ``request`` / ``outputs`` (our wire types to
and from TensorRT-LLM's), ``kv_events`` (KV events for the router). ``main`` wires them to the
runtime.

Journey: request plane -> **engine worker** -> token ids back.
"""
