"""The HTTP API: ``create_app`` builds it; ``routes/`` holds one router per concern.

``app`` (factory, lifespan, body limit) · ``deps`` (settings, API key, the loaded analyzer) ·
``schemas`` (request and response models) · ``errors`` (the one 422 format) · ``routes/``.
"""

from service.api.app import create_app

__all__ = ["create_app"]
