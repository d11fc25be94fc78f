"""One generation replica: one base model on one GPU, running the Cog container's engine
(generation/engine.py) on the same call arguments a container's server would pass.

Trained weights are multiplexed by their URL: Ray Serve routes a request to a replica that
has its `replicate_weights` loaded, from the model ids each replica reports. Those ids are
the engine's own cache entries (generation/weights_cache.py), loaded through the engine and
bounded by the same count, `loras_per_replica`: when Serve drops an id, the engine drops the
weights, so no second copy is kept anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import weakref
from dataclasses import replace

from ray import serve

from fleet.cog_api import call_arguments, data_uri, failed, prediction_id, succeeded
from fleet.options import FleetOptions
from generation.engine import INPUTS_PREFIX, GenerationEngine
from generation.request import validate
from serving.containers import CONTAINERS
from serving.schema import inspect_entry
from weights.scratch import call_folder, remove_orphans
from weights.settings import ModelSettings

# Each request's outputs are written in such a folder and inlined.
REQUEST_PREFIX = "sdxl-fleet-request-"


def sweep_orphans() -> None:
    """Remove the request folders (outputs, fetched inputs) of replicas on this node that were
    killed mid-request. Swept before each request, not only when a replica starts: Serve may
    start a replacement before the killed process has exited."""
    for prefix in (REQUEST_PREFIX, INPUTS_PREFIX):
        remove_orphans(prefix)


class LoadedWeights:
    """What Serve's multiplexer keeps per model id: a reference to the engine's entry, never
    the tensors. Serve calls `__del__` when it drops the id; the engine drops it then."""

    def __init__(self, engine: GenerationEngine, reference: str):
        self.cache, self.reference = engine.weights_cache, reference
        self.entry = weakref.ref(self.cache.get(reference))

    def __del__(self):
        entry = self.entry()
        if entry is not None:  # a newer load of the same URL stays
            self.cache.discard(self.reference, entry)


class GenerationReplica:
    def __init__(self, options: FleetOptions):
        self.container = CONTAINERS[options.container]
        settings = ModelSettings.from_env(self.container.family)
        settings = replace(settings, loaded_weights=options.loras_per_replica)
        self.local_dirs = settings.local_dirs
        self.engine = GenerationEngine(settings)
        self.inputs = inspect_entry(self.container.predictor)
        self.turn = asyncio.Lock()
        self.name = serve.get_replica_context().replica_id.to_full_id_str()  # its actor's name
        engine = self.engine

        async def load_weights(reference: str) -> LoadedWeights:
            return await asyncio.to_thread(LoadedWeights, engine, reference)

        # Wrapped here, not as a method: the bound comes from the options. Serve keeps its
        # state on the function it wraps, so a plain function, not a bound method.
        multiplexed = serve.multiplexed(max_num_models_per_replica=options.loras_per_replica)
        self.load_weights = multiplexed(load_weights)

    async def predict(self, values: dict) -> dict:
        """A `/predictions` body's `input` (already checked against the schema) → Cog's
        response body, with this replica's name and how many trained weights it loaded into
        memory for this request (0 when they were there already)."""
        async with self.turn:  # one request at a time; the rest wait here, beside their weights
            return await self._predict(values)

    async def _predict(self, values: dict) -> dict:
        sweep_orphans()
        call_id, started, logs = prediction_id(), time.monotonic(), io.StringIO()
        loads_before = self.engine.weights_cache.loads
        try:
            with contextlib.redirect_stdout(logs):
                request = self.container.request(**call_arguments(self.inputs, values))
                validate(request, self.local_dirs)  # refused before any download
                reference = serve.get_multiplexed_model_id()
                if reference:
                    await self.load_weights(reference)
                output = await asyncio.to_thread(self._generate, request)
            body = succeeded(call_id, output, logs.getvalue(), time.monotonic() - started)
        except Exception as error:  # the call failed: said in the body, as Cog says it
            body = failed(call_id, error, logs.getvalue(), time.monotonic() - started)
        loads = self.engine.weights_cache.loads - loads_before
        return {"body": body, "replica": self.name, "loads": loads}

    def _generate(self, request) -> list[str]:
        with call_folder(REQUEST_PREFIX) as folder:
            result = self.engine.generate(request, folder)
            return [data_uri(path) for path in result.paths]
