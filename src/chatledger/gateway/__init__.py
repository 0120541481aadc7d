"""The HTTP layer: a lean ASGI application for the LLM endpoints and the gateway's own routes."""
