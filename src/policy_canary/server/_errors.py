"""Errors as RFC 9457 problem documents, and the one map from error codes to HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from policy_canary.errors import CanaryError, ErrorCode, RateLimitedError, StoreError
from policy_canary.server._render import render_json

log = logging.getLogger("policy_canary.server")

PROBLEM_TYPE = "application/problem+json"

#: The one place error codes become HTTP statuses.
STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.AMBIGUOUS_REFERENCE: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_SPEC: 422,
    ErrorCode.INVALID_NAME: 422,
    ErrorCode.INVALID_METRIC: 422,
    ErrorCode.INVALID_PLAN: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.STORE_ERROR: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
}

#: OpenFeature error codes of OFREP responses, by our code (anything else is GENERAL).
OFREP_CODES: Mapping[ErrorCode, str] = {
    ErrorCode.NOT_FOUND: "FLAG_NOT_FOUND",
    ErrorCode.INVALID_INPUT: "INVALID_CONTEXT",
}


def status_of(error: CanaryError) -> int:
    """The HTTP status of an error."""
    return STATUS[error.code]


def _headers(error: CanaryError) -> dict[str, str]:
    if isinstance(error, RateLimitedError):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, StoreError):  # 503: clients (OTLP exporters) back off, then retry
        return {"Retry-After": "1"}
    if error.code is ErrorCode.UNAUTHENTICATED:
        return {"WWW-Authenticate": 'Bearer realm="policy-canary"'}
    return {}


def problem(error: CanaryError) -> Response:
    """An ``application/problem+json`` response for ``error``."""
    status = status_of(error)
    body: dict[str, Any] = {
        "type": f"urn:policy-canary:error:{error.code.value}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": error.message,
        "code": error.code.value,
    }
    return render_json(body, status=status, media_type=PROBLEM_TYPE, headers=_headers(error))


def ofrep_error(error: CanaryError, key: str | None, *, parse: bool = False) -> Response:
    """An OFREP failure body (``errorCode``/``errorDetails``; with ``key`` for one flag)."""
    code = "PARSE_ERROR" if parse else OFREP_CODES.get(error.code, "GENERAL")
    body: dict[str, Any] = {"errorCode": code, "errorDetails": error.message}
    if key is not None:
        body["key"] = key
    status = status_of(error)
    return render_json(body, status=status, headers=_headers(error))


def _describe(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a problem document."""

    async def canary_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, CanaryError)
        return problem(error)

    async def invalid_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return problem(CanaryError(_describe(list(error.errors()))))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        status = error.status_code
        code = ErrorCode.NOT_FOUND if status == 404 else ErrorCode.INVALID_INPUT
        detail = error.detail if isinstance(error.detail, str) else HTTPStatus(status).phrase
        if status == 404:
            detail = f"no route {request.method} {request.url.path}; see /api/v1/openapi.json"
        body = {
            "type": f"urn:policy-canary:error:{code.value}",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "code": code.value,
        }
        return render_json(body, status=status, media_type=PROBLEM_TYPE, headers=error.headers)

    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        body = {
            "type": "urn:policy-canary:error:internal",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "the server failed unexpectedly; the error is in its log",
            "code": "internal",
        }
        return render_json(body, status=500, media_type=PROBLEM_TYPE)

    app.add_exception_handler(CanaryError, canary_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
