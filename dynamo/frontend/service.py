"""The frontend's state and its completion path (journey: HTTP -> **parse -> preprocess -> route ->
stream | collect** -> client).

``FrontendService`` holds what one frontend process serves with (runtime, model watcher, metrics,
prefill router) and ``handle`` runs one ``POST /v1/chat/completions`` or ``/v1/completions`` request
through the stages of ``dynamo.frontend.stages``: every choice of it (``n``, a list of prompts) is
routed to its own generation and the results are merged into one response. Every refusal and
failure is answered in the OpenAI error shape with its status (400, 404, 413, 429, 500, 503) and
counted by status, once per HTTP request. New requests' parse and preprocess are paced per loop
turn (``dynamo.frontend.admission_pacer``), and so are streams' outputs on the way back
(``dynamo.frontend.turn_budget``), so that a burst does not hold the loop. A client that hangs up
before its response starts (while its request waits for a first output, or for the whole answer)
cancels the work on the workers and is counted as 499 (``dynamo.frontend.disconnect``).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from dynamo.frontend.admission_pacer import AdmissionPacer
from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.disagg import PrefillRouter
from dynamo.frontend.disconnect import ClientGone, DisconnectWatch
from dynamo.frontend.endpoints import CompletionEndpoint
from dynamo.frontend.loop_lag import LoopLagMonitor
from dynamo.frontend.metrics import FrontendMetrics, RequestMetrics
from dynamo.frontend.models import ModelManager
from dynamo.frontend.responses import ResponseBuilder, error_response
from dynamo.frontend.stages.collect import collect
from dynamo.frontend.stages.parse import LARGE_BODY, read_body, validate
from dynamo.frontend.stages.preprocess import admit, configure_pool, preprocess
from dynamo.frontend.stages.route import route_all
from dynamo.frontend.stages.stream import stream_response
from dynamo.frontend.turn_budget import TurnBudget
from dynamo.llm.errors import RequestError
from dynamo.runtime import DistributedRuntime
from dynamo.runtime.names import new_request_id


class FrontendService:
    """One frontend process's serving state; ``handle`` serves a completion request."""

    def __init__(self, config: FrontendConfig, runtime: DistributedRuntime) -> None:
        self.config = config
        self.runtime = runtime
        # A silent worker connection fails its streams (migrated or a clear error) within this bound.
        runtime.request_client.liveness_timeout = config.request_plane_liveness_timeout
        self.models = ModelManager(runtime, config)
        self.metrics = FrontendMetrics(runtime.metrics, lambda: self.models.models.values())
        self.prefill = PrefillRouter(config, self.metrics.disagg)
        self.pacer = AdmissionPacer(config.admission_budget)
        self.turns = TurnBudget()
        configure_pool(config.preprocess_threads, config.preprocess_nice)
        self.loop_lag = LoopLagMonitor(self.metrics.loop_lag, stall_threshold=config.loop_stall_threshold)

    async def handle(self, request: Request, endpoint: CompletionEndpoint) -> Response:
        """parse -> preprocess -> route -> stream | collect."""
        started = time.monotonic()
        config = self.config
        name: str | None = None
        try:
            body = await read_body(request, config.max_body_size)
            admission = await self.pacer.enter()
            begun = time.perf_counter()
            offload = len(body) > LARGE_BODY
            try:
                req = await validate(endpoint, body, offload)
                name = req.model
                model = admit(self.models, name, config.max_inflight_requests)
                with model.hold_slot():
                    request_id = request.headers.get("x-request-id") or new_request_id()
                    choices = await preprocess(model, endpoint, req, request_id, offload)
                    builder = ResponseBuilder(
                        endpoint.kind,
                        endpoint.id_prefix + request_id,
                        model.name,
                        choices,
                        model.preprocessor,
                        include_usage=req.include_usage,
                        continuous_usage=bool(
                            req.stream_options and req.stream_options.continuous_usage_stats
                        ),
                    )
            finally:  # offloaded: the loop's share was small, the wall time is the threads'
                admission.done(0.0 if offload else time.perf_counter() - begun)
        except RequestError as exc:
            # Labelled by model only when it is served: client-chosen names must not add series.
            label = name if name is not None and name in self.models.models else "unknown"
            self.metrics.rejected(label, endpoint.label, exc.status)
            return error_response(exc)

        mm = self.metrics.model(model.name)
        record = RequestMetrics(mm, model, endpoint.label, bool(req.stream), started, builder.prompt_tokens)
        migration_limit = config.migration_limit
        if migration_limit is None:
            migration_limit = model.card.migration_limit
        watch = DisconnectWatch(request.receive)  # one watch for routing and the response
        handed_over = False  # to the stream's response, which stops the watch when it ends
        try:
            try:
                routed = await watch.run(
                    route_all(
                        self.prefill,
                        self.runtime.request_client,
                        model,
                        choices,
                        migration_limit,
                        mm.migrated,
                    )
                )
            except ClientGone:
                record.finish("499", 0, None)
                return Response(status_code=499)  # nobody is there to read it
            except RequestError as exc:
                record.finish(str(exc.status), 0, None)
                return error_response(exc)
            except BaseException:
                record.finish("500", 0, None)
                raise
            record.first_output()
            headers = routed[0].debug_headers(request.headers)
            if req.stream:
                response = await stream_response(routed, builder, record, headers, self.turns, watch)
                handed_over = True
                return response
            try:
                return await watch.run(collect(routed, builder, record, headers))
            except ClientGone:
                return Response(status_code=499)
        finally:
            if not handed_over:
                watch.stop()
