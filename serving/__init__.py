"""Serving: the OpenAPI schema Cog's server validates against, local servers and the CLI."""
