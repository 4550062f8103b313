"""The completion path's stages, in order (journey: HTTP -> **parse -> preprocess -> route -> stream
| collect** -> client), one module each; ``dynamo.frontend.service`` runs a request through them.

- ``parse``: body -> validated OpenAI request (413, 400)
- ``preprocess``: admit to the model (404, 503, 429), then template + tokenize (400)
- ``route``: choose the worker(s), open the stream, wait for the first output (503, 429)
- ``stream``: outputs -> server-sent events as they come; ``collect``: outputs -> one JSON body
"""
