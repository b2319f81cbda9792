"""OTLP/HTTP trace payloads: both encodings of the specification, parsed with opentelemetry-proto.

JSON follows the OTLP/HTTP JSON mapping: lowerCamelCase keys, trace and span ids as hex
strings (not base64), 64-bit integers as strings or numbers, enums as integers.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from policy_canary.errors import InputError, UnsupportedMediaError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_IDS = frozenset({"traceId", "spanId", "parentSpanId"})


def media_type(content_type: str | None) -> str:
    """The request's encoding; 415 for anything but the two OTLP/HTTP ones."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise UnsupportedMediaError(
            f"Content-Type {media or 'missing'!r} is not OTLP/HTTP; send {PROTOBUF} or {JSON}"
        )
    return media


def decode(raw: bytes, media: str) -> ExportTraceServiceRequest:
    """Parse an export request; :class:`InputError` (400, not retried) when malformed."""
    if media == PROTOBUF:
        parsed = ExportTraceServiceRequest()
        try:
            parsed.ParseFromString(raw)
            return parsed
        except (DecodeError, ValueError) as exc:
            raise InputError(f"the body is not an OTLP ExportTraceServiceRequest ({exc})") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("an OTLP JSON body is an object with 'resourceSpans'")
    try:
        parsed = ExportTraceServiceRequest()
        json_format.ParseDict(_ids_to_base64(data), parsed, ignore_unknown_fields=True)
        return parsed
    except (json_format.ParseError, RecursionError) as exc:
        raise InputError(f"the body is not an OTLP trace export: {exc}") from None


def _ids_to_base64(value: Any) -> Any:
    """OTLP JSON spells bytes ids as hex; protobuf's JSON mapping expects base64."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _IDS and isinstance(item, str):
                try:
                    item = base64.b64encode(bytes.fromhex(item)).decode()
                except ValueError:
                    raise InputError(f"{key} {item[:40]!r} is not a hex id") from None
            out[key] = _ids_to_base64(item)
        return out
    if isinstance(value, list):
        return [_ids_to_base64(item) for item in value]
    return value


def encode(response: ExportTraceServiceResponse, media: str) -> bytes:
    """The response in the request's encoding."""
    if media == PROTOBUF:
        data: bytes = response.SerializeToString()
        return data
    text: str = json_format.MessageToJson(response, indent=None)
    return text.encode()


__all__ = ["JSON", "PROTOBUF", "decode", "encode", "media_type"]
