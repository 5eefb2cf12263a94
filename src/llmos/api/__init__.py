"""The REST API (FastAPI): validation, a call into a service, the response."""

from llmos.api.app import create_app

__all__ = ["create_app"]
