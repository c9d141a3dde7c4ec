"""The HTTP API: ``create_app`` builds it; ``routes/`` holds one router per concern.

``app`` (factory, lifespan) · ``middleware`` (request ids, API key, CORS, the body guard: limits,
draining, encoding) · ``logs`` (request ids on log lines) · ``deps`` (settings, the loaded analyzer) ·
``schemas`` (request and response models) · ``errors`` (the one 422 format) · ``routes/``.
"""

from service.api.app import create_app

__all__ = ["create_app"]
