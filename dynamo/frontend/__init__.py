"""The OpenAI-compatible HTTP frontend (journey: **HTTP -> parse -> preprocess -> route -> request
plane** -> engine -> **back: stream | collect**).

``main`` starts the process; ``app`` is the ASGI entry (completion routes to ``service``, the rest
to ``api``); ``service`` runs a completion request through ``stages``; ``models`` watches
discovery; ``routing`` picks instances; ``generation`` and ``disagg`` carry a request to the
workers; ``responses`` and ``sse`` format the way back; ``metrics`` and ``openapi`` describe it.
docs/frontend.md walks through the same in prose.
"""
