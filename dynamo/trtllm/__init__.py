"""TensorRT-LLM engine worker: ``args`` (command line and LLM-API options on top of the shared
worker flags), ``engine`` (``TrtllmEngine``: the in-process ``tensorrt_llm.LLM`` on the worker
base), ``request`` / ``outputs`` (our wire types to and from TensorRT-LLM's), ``kv_events``
(TensorRT-LLM's KV events for the router). ``main`` is ``run_worker(TrtllmEngine)``.

Journey: request plane -> **engine worker** -> token ids back.
"""
