"""SGLang engine worker: ``args`` (command line: SGLang's server flags plus the shared worker
flags), ``engine`` (``SglangEngine``: the in-process ``sglang.Engine`` on the worker base),
``request`` / ``outputs`` (our wire types to and from SGLang's), ``kv_events`` (SGLang's KV events
for the shared ZMQ subscriber). ``main`` is ``run_worker(SglangEngine)``.

Journey: request plane -> **engine worker** -> token ids back.
"""
