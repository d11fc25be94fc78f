"""Past one machine: many users' fine-tunes served and trained on a Ray cluster.

    options.py    what an operator decides (replicas, autoscaling bounds, LoRAs per replica)
    cog_api.py    Cog's HTTP request and response bodies, checked as Cog's server checks them
    replica.py    one base model on one GPU: the Cog container's engine, weights multiplexed
    ingress.py    the HTTP front: `/predictions` routed by the weights' URL, `/trainings`
    app.py        the Ray Serve application (and the builder a Serve config file names)
    training.py   trainings as Ray tasks that reserve GPUs, queue, cancel, publish a URL
    shelf.py      where trained tarballs go and the URL they are served at
    cluster.py    a local cluster on 127.0.0.1 with the tiny models (`make fleet`, tests)
    serve_config.yaml   the Serve config an operator deploys on a GPU cluster (docs/fleet.md)

Nothing under generation/, training/ or serving/ imports this package: the Cog containers
run without Ray installed.
"""
