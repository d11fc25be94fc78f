"""The fleet's HTTP front: Cog's routes, with each prediction routed by its weights' URL.

`POST /predictions` takes the body a Cog container takes; the input is checked as coglet
checks it (422 otherwise), and the request goes to a generation replica with its
`replicate_weights` URL as the multiplexed model id, so Serve sends it to a replica that
already holds those weights. A request with no weights URL (none, a data URI, or text the
call refuses) names no model and goes to any replica. A replica that dies mid-request is
replaced by Serve; the request is sent once more, and if that fails too the body says so.

`POST /trainings` runs a training on the cluster (fleet/training.py) and answers with its
tarball's URL, which `replicate_weights` can name at once.
"""

from __future__ import annotations

import json
import time

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse

from fleet.cog_api import SCHEMAS_DIR, InputProblems, failed, prediction_id
from fleet.options import FleetOptions
from fleet.training import start_queue
from serving.containers import CONTAINERS
from weights.references import has_scheme

REPLICA_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, ReplicaUnavailableError)
ATTEMPTS = 2  # a request whose replica died is sent once more
# Response headers that say where a prediction ran (benchmarks and tests count loads by them).
REPLICA_HEADER = "X-Fleet-Replica"
LOADS_HEADER = "X-Fleet-Weights-Loaded"  # trained weights the request loaded into memory


class FleetIngress:
    def __init__(self, replicas, options: FleetOptions):
        """`replicas`: the generation deployment's handle."""
        self.replicas = replicas
        self.container = CONTAINERS[options.container]
        self.problems = InputProblems(self.container)
        self.training_problems = InputProblems(self.container, "TrainingInput")
        shelf = options.shelf()  # no shelf: predictions only
        self.trainings = None
        if shelf is not None:
            self.trainings = start_queue(options.container, shelf, options.cpus_per_training)
        self.default_gpus = options.gpus_per_training

    async def __call__(self, request: Request) -> JSONResponse:
        path, method = request.url.path.rstrip("/"), request.method
        if method == "GET" and path == "/health-check":
            return JSONResponse({"status": "READY"})
        if method == "GET" and path == "/openapi.json":
            schema = json.loads((SCHEMAS_DIR / f"{self.container.name}.json").read_text())
            return JSONResponse(schema)
        if method == "POST" and path == "/predictions":
            return await self._predict(request)
        if path.startswith("/trainings") and self.trainings is not None:
            return await self._training_route(request, method, path)
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def _predict(self, request: Request) -> JSONResponse:
        values, refusal = await _input(request, self.problems)
        if refusal is not None:
            return refusal
        weights = values.get("replicate_weights")
        routed = isinstance(weights, str) and has_scheme(weights, "http://", "https://")
        model_id = weights if routed else ""
        handle = self.replicas.options(multiplexed_model_id=model_id)
        started, lost = time.monotonic(), None
        for _ in range(ATTEMPTS):
            try:
                answer = await handle.predict.remote(values)
            except REPLICA_LOST as error:
                lost = error
                continue
            headers = {REPLICA_HEADER: answer["replica"], LOADS_HEADER: str(answer["loads"])}
            return JSONResponse(answer["body"], headers=headers)
        message = (
            f"The replica generating this request stopped ({type(lost).__name__}), and so did "
            f"the one it was sent to next; the deployment is replacing them. Send the request "
            "again in a minute; if it keeps failing, the request may be what stops them "
            "(e.g. out of GPU memory): try fewer or smaller outputs."
        )
        return JSONResponse(failed(prediction_id(), message, "", time.monotonic() - started))

    async def _training_route(self, request: Request, method: str, path: str) -> JSONResponse:
        parts = path.split("/")[2:]  # /trainings[/<id>[/cancel]]
        if method == "POST" and not parts:
            values, refusal = await _input(request, self.training_problems)
            if refusal is not None:
                return refusal
            gpus = request.query_params.get("gpus", str(self.default_gpus))
            if not gpus.isdigit():
                detail = f"gpus={gpus!r}: give a whole number of GPUs (0 on a CPU-only cluster)."
                return JSONResponse({"detail": detail}, 422)
            run_id = await self.trainings.submit.remote(values, int(gpus))
            if request.headers.get("prefer") == "respond-async":
                return JSONResponse(await self.trainings.status.remote(run_id), 202)
            return JSONResponse(await self.trainings.wait.remote(run_id))
        body = None
        if method == "GET" and len(parts) == 1:
            body = await self.trainings.status.remote(parts[0])
        if method == "POST" and len(parts) == 2 and parts[1] == "cancel":
            body = await self.trainings.cancel.remote(parts[0])
        if body is None:  # an unknown route or training id
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse(body)


async def _input(request: Request, problems: InputProblems):
    """(the body's `input`, None), or (None, the 422 response coglet would give)."""
    try:
        body = await request.json()
    except ValueError:
        detail = [{"loc": ["body"], "msg": "not a JSON object", "type": "value_error"}]
        return None, JSONResponse({"detail": detail}, status_code=422)
    values = body.get("input", {}) if isinstance(body, dict) else body
    values = {} if values is None else values
    detail = problems.of(values)
    if detail:
        return None, JSONResponse({"detail": detail}, status_code=422)
    return values, None
