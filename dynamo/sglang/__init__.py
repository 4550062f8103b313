"""SGLang engine worker: ``args`` (command line: SGLang's server flags plus ours), ``engine`` (the
in-process ``sglang.Engine`` behind ``generate``), ``request`` / ``outputs`` (our wire types to and
from SGLang's), ``kv_events`` (KV events for the router), ``disagg`` (decode workers find a prefill
worker). ``main`` wires them to the runtime.

Journey: request plane -> **engine worker** -> token ids back.
"""
