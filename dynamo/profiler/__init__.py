"""The profiler (``python3 -m dynamo.profiler``): measures an engine's prefill TTFT by ISL and
decode ITL by context and concurrency on the batch settings it sweeps (real engine processes behind
a real frontend, over HTTP), replays the stated workload on each (Poisson arrivals at the request
rate) to check the SLA directly, writes the planner's performance profile, and proposes the smallest
DynamoGraphDeployment (aggregated or disaggregated, replica counts) that meets a stated SLA at a
stated ISL/OSL and load, or says why none does.

Journey: before serving, not on the request path: a DynamoGraphDeploymentRequest -> **profiling**
(``sweep`` -> ``select`` -> ``generate`` -> ``results``) -> the generated graph, deployed by the
operator or by ``python3 -m dynamo.deploy run``, whose planner reads the profile.
"""
