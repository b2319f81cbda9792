"""Reading request bodies within limits: size (also after gzip), content type, strict JSON."""

from __future__ import annotations

import json
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from policy_canary.errors import InputError, TooLargeError, UnsupportedMediaError
from policy_canary.server._state import Limits, server_state

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Body:
    """A request body as received (for idempotency hashing) and as parsed JSON."""

    raw: bytes
    data: Any


def _too_large(limit: int) -> TooLargeError:
    return TooLargeError(
        f"the request body is over this endpoint's limit of {limit:,} bytes; nothing was "
        "stored (send smaller batches)"
    )


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, decompressed, refusing more than ``limit`` bytes before or after gzip."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise UnsupportedMediaError(
            f"Content-Encoding {encoding!r} is not accepted; send identity or gzip"
        )
    chunks: list[bytes] = []
    size = 0
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    async for chunk in request.stream():
        if inflate is not None:
            try:
                chunk = inflate.decompress(chunk, limit + 1 - size)
            except zlib.error as exc:
                raise InputError(f"the gzip body is corrupt ({exc})") from None
            if inflate.unconsumed_tail:
                raise _too_large(limit)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    if inflate is not None and not inflate.eof and size:
        raise InputError("the gzip body is truncated")
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise InputError(f"{name} is not a JSON number; send finite numbers only")


def parse_json(raw: bytes, content_type: str | None, *, optional: bool = False) -> Any:
    """Parse a JSON body; the content type must be JSON."""
    if not raw:
        if optional:
            return {}
        raise InputError("this endpoint needs a JSON body")
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type {media or 'missing'!r} is not accepted; send application/json"
        )
    try:  # pydantic-core's parser: 10% of a batch of events' CPU less; see below for errors
        return from_json(raw, allow_inf_nan=False)
    except ValueError:
        pass
    # The standard library's parser, for the message (and for what only it accepts: a lone
    # surrogate escape, nesting deeper than pydantic-core's 200 levels). Both parse every
    # document both accept to the same value (tests/server/test_body.py).
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise InputError(f"the body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None  # fmt: skip
    except RecursionError:
        raise InputError("the body nests too deeply") from None


def json_body(
    limit: Callable[[Limits], int], *, optional: bool = False
) -> Callable[[Request], Awaitable[Body]]:
    """A dependency that reads and parses a JSON body within the server's ``limit(limits)``."""

    async def dependency(request: Request) -> Body:
        raw = await read_body(request, limit=limit(server_state(request).limits))
        return Body(raw, parse_json(raw, request.headers.get("content-type"), optional=optional))

    return dependency


def model(cls: type[M], data: Any, *, where: str = "body") -> M:
    """Validate ``data`` as ``cls``; errors say which field and what to send."""
    if not isinstance(data, dict):
        raise InputError(f"the {where} must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data, strict=True)
    except ValidationError as exc:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(p) for p in e["loc"]) or where
            parts.append(f"{loc}: {e['msg']}")
        raise InputError(f"{where}: " + "; ".join(parts)) from None


def any_object(data: Any, *, where: str = "body") -> dict[str, Any]:
    """A body that must be a JSON object of any shape (the library validates the rest)."""
    if not isinstance(data, dict):
        raise InputError(f"the {where} must be a JSON object, got {type(data).__name__}")
    return data


def schema(cls: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents a JSON request body of model ``cls``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": cls.model_json_schema()}},
        }
    }
