"""The studio: a web page to train on your photos and generate with the result, a client of
the container's own Cog HTTP API (docs/studio.md). `python -m studio` starts it."""
