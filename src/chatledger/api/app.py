"""The query API (seed 000): a FastAPI app over the store's reader, answering errors the OpenAI way.

The gateway mounts it as its fallback, so it sees every path the LLM routes do not own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from chatledger.api import requests, responses, search, sessions, usage
from chatledger.api.deps import require_admin, settle_recorder
from chatledger.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound, error_body
from chatledger.store.reader import Reader

if TYPE_CHECKING:
    from chatledger.gateway.app import ChatLedgerApp

log = logging.getLogger("chatledger")

DESCRIPTION = """Every exchange the gateway recorded: sessions, requests, responses and usage totals.

Lists answer `{"object": "list", "data", "total", "limit", "offset", "has_more", "next_cursor"}`; page with
`limit`/`offset`, or pass `next_cursor` back as `cursor`. Errors are OpenAI-style `{"error": {...}}`.
With CHATLEDGER_MASTER_KEY set every route wants it as a Bearer token; without one, only loopback
clients are answered.
"""


def build_query_api(gateway: ChatLedgerApp) -> FastAPI:
    assert gateway.store is not None
    app = FastAPI(title="chatledger query API", version="1", description=DESCRIPTION,
                  dependencies=[Depends(require_admin), Depends(settle_recorder)])
    app.state.gateway = gateway
    app.state.reader = Reader(gateway.store.engine, gateway.store.database_path)
    for module in (sessions, requests, responses, usage, search):
        app.include_router(module.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    return app


def _answer(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    response = Response(error.body(), status_code=error.status, media_type="application/json", headers=headers)
    for name, value in error.headers():
        response.headers.append(name.decode("latin-1"), value.decode("latin-1"))
    return response


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _answer(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "header", "body")]
    param = ".".join(location) or None
    message = f"Invalid value for {param!r}: {first.get('msg', 'invalid')}." if param else "Invalid request."
    return _answer(InvalidRequest(message, param=param, code="invalid_parameter"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path, method = request.url.path, request.method
    if exc.status_code == 404:
        if path in request.app.state.gateway.routes:  # an LLM route, asked with another method
            return _answer(MethodNotAllowed(f"{method} is not allowed on {path}"))
        return _answer(NotFound(f"Unknown path {path}", code="unknown_url"))
    if exc.status_code == 405:
        return _answer(MethodNotAllowed(f"{method} is not allowed on {path}"), exc.headers)
    error = GatewayError(str(exc.detail), code=None)
    error.status = exc.status_code
    error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _answer(error, exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("query API failed on %s %s: %r", request.method, request.url.path, exc)
    return Response(error_body("The gateway could not answer this query.", "server_error", "internal_error"),
                    status_code=500, media_type="application/json")
