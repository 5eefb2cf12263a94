"""Serving: engines (tokens in, tokens out), residency, the OpenAI-compatible gateway, deployments.

Kept import-light: importing ``llmos.serve`` imports neither torch nor transformers.
"""
