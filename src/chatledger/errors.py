"""Every error the gateway can answer with, each knowing its HTTP status and OpenAI error type.

GatewayError
 +-- InvalidRequest            400 invalid_request_error   (malformed JSON, missing fields)
 |    +-- PayloadTooLarge      413 invalid_request_error
 +-- AuthenticationFailed      401 authentication_error
 +-- NotFound                  404 not_found_error
 |    +-- ModelNotFound        404 invalid_request_error   (code model_not_found, as OpenAI answers)
 +-- MethodNotAllowed          405 invalid_request_error
 +-- UpstreamError             (anything that went wrong past the gateway)
      +-- UpstreamHTTPError    4xx/5xx relayed with the upstream's own body
      +-- UpstreamUnreachable  502 upstream_error          (connection refused, reset, DNS)
      +-- UpstreamTimeout      504 timeout_error
      +-- UpstreamProtocolError 502 upstream_error         (an answer we could not understand)
"""

from __future__ import annotations

import orjson


def error_body(message: str, type_: str, code: str | int | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status; `payload` is the OpenAI-shaped body to relay."""

    def __init__(
        self,
        status: int,
        payload: bytes,
        message: str,
        *,
        content_type: bytes = b"application/json",
        relay_headers: list[tuple[bytes, bytes]] | None = None,
        provider_body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload
        # The upstream's own error body, when `payload` is a translation of it (kept for the record).
        self.provider_body = provider_body
        self.content_type = content_type
        self.relay_headers = relay_headers or []

    def body(self) -> bytes:
        return self.payload

    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.relay_headers


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    status = 502
    code = "upstream_bad_response"
