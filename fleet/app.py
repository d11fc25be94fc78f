"""The Ray Serve application: the HTTP ingress in front of the generation replicas.

    serve run fleet.app:app_builder min_replicas=2 max_replicas=4 loras_per_replica=16
    serve deploy fleet/serve_config.yaml          # the same, from a Serve config file

`app_builder` takes the config's `args` (fleet/options.py); the config's `deployments:`
section may still override Serve's own options of either deployment by name.
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from fleet.ingress import FleetIngress
from fleet.options import FleetOptions
from fleet.replica import GenerationReplica

INGRESS_NAME = "FleetIngress"
REPLICA_NAME = "GenerationReplica"


def build_app(options: FleetOptions) -> Application:
    replicas = serve.deployment(GenerationReplica, name=REPLICA_NAME)
    replicas = replicas.options(**options.replica_deployment()).bind(options)
    # The ingress only parses JSON and forwards: no GPU, a sliver of a CPU.
    ingress = serve.deployment(
        FleetIngress,
        name=INGRESS_NAME,
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": 0.1},
        max_ongoing_requests=1000,
    )
    return ingress.bind(replicas, options)


def app_builder(args: dict) -> Application:
    """What a Serve config's `import_path` names; `args` are FleetOptions fields."""
    return build_app(FleetOptions.from_args(args))
