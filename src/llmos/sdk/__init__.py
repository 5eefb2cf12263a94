"""The Python SDK over the REST API (httpx)."""

from llmos.sdk.client import APIError, Client, DaemonUnreachable, LLMOSClientError, job_spec

__all__ = ["APIError", "Client", "DaemonUnreachable", "LLMOSClientError", "job_spec"]
