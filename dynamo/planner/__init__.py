"""The planner (``python3 -m dynamo.planner``): watches a graph's load and publishes how many prefill
and decode workers it should run, for a connector to apply.

Journey: beside the request path, not on it. Frontends and workers report (``/metrics``, load
reports on the event plane) -> **the planner** observes an interval, predicts the next one, decides
replicas within the GPU budget and minimums -> a ``ScalingConnector`` applies the decision (the
virtual connector publishes it in the graph's store; ``python3 -m dynamo.deploy run`` starts or
drains worker processes accordingly).
"""
