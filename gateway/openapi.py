"""The hand-written parts of the OpenAPI document.

``POST /enhance`` reads the raw request stream, so FastAPI cannot infer its body; the multipart
schema below is written to match :mod:`gateway.upload`. The document is OpenAPI 3.0 so the bundled
Swagger UI (4.x, served locally from ``swagger-ui-bundle``) renders it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.upload import IDEMPOTENCY_HEADER, OPTION_FIELD

__all__ = ["ENHANCE_BODY", "ENHANCE_PARAMETERS", "ERROR_REPLIES", "OPENAPI_VERSION", "openapi_document", "reply"]

OPENAPI_VERSION = "3.0.3"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "msg"],
                "properties": {
                    "code": {"type": "string", "example": "INVALID_FILE"},
                    "msg": {"type": "string", "example": "Invalid file type from input"},
                },
            },
        },
    },
    "EnhanceReply": {
        "type": "object",
        "description": "Each form field name of the request maps to its job id, or to a list of job ids "
                       "(in part order) when the field carried several files.",
        "additionalProperties": {
            "oneOf": [
                {"type": "string", "example": "ACtYB187SXiv9___FlpPig"},
                {"type": "array", "items": {"type": "string"}},
            ],
        },
        "example": {"file_key": "ACtYB187SXiv9___FlpPig"},
    },
    "JobStat": {
        "type": "object",
        "required": ["model", "app_id", "billed_time", "timestamp", "mod_time", "file_name", "job_id", "uid",
                     "file_key", "job_status", "progress"],
        "properties": {
            "model": {"type": "string", "enum": ["model_16k", "model_48k"]},
            "app_id": {"type": "integer", "example": 1},
            "billed_time": {"type": "number", "description": "seconds of audio x channels"},
            "timestamp": {"type": "integer", "description": "unix seconds when the job was created"},
            "mod_time": {"type": "integer", "description": "unix seconds of the last status change"},
            "result": {"type": "string", "format": "uri",
                       "description": "signed download URL; present only when job_status is completed"},
            "file_name": {"type": "string"},
            "job_id": {"type": "string"},
            "uid": {"type": "integer"},
            "file_key": {"type": "string", "description": "the form field name the file came under"},
            "job_status": {"type": "string", "enum": ["pending", "pre-processing", "processing",
                                                      "post-processing", "completed", "failed"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "error": {
                "type": "object",
                "description": "present only when job_status is failed",
                "properties": {"code": {"type": "string"}, "msg": {"type": "string"}},
            },
        },
    },
    "Me": {
        "type": "object",
        "required": ["uid", "name"],
        "properties": {"uid": {"type": "integer"}, "name": {"type": "string"}},
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string", "example": "ok"}}},
}

SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "The API key, raw or as `Bearer <key>`.",
    },
}

ENHANCE_BODY: dict[str, Any] = {
    "required": True,
    "description": "One or more audio files under any field names (a name used twice gives a list of job "
                   f"ids), and optionally `{OPTION_FIELD}`. Any other non-file field is refused. The body is "
                   "parsed and forwarded as a stream.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file_key": {"type": "string", "format": "binary",
                                 "description": "an audio file (WAV, FLAC, OGG, MP3, ...); any field name works"},
                    OPTION_FIELD: {"type": "number", "minimum": 0,
                                   "description": "maximum noise attenuation in dB for every file of the request "
                                                  "(absent: no limit; 0: pass-through)"},
                },
                "additionalProperties": {"type": "string", "format": "binary"},
            },
            "encoding": {"file_key": {"contentType": "audio/*, application/octet-stream"}},
        },
    },
}


ENHANCE_PARAMETERS: list[dict[str, Any]] = [{
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "example": "6f1c2a8e-upload-42",
    "description": "Makes the request safe to retry after a lost reply. A retry with the same key from the "
                   "same user within 24 h returns the first reply again and creates no jobs. The same request "
                   "means the same form field names, file names, file contents and options, in the same order "
                   "(the multipart boundary may differ). The key with a different request, or a retry while "
                   "the first request still runs, gets 409 `IDEMPOTENCY_CONFLICT`. Only successful replies are "
                   "remembered: after an error the key may be used again. 1 to 255 visible ASCII characters, "
                   "e.g. a UUID; keys are per user, and a user holds at most a configured number at a time "
                   "(429 `RATE_LIMITED` beyond).",
}]


def reply(description: str, schema: str | None = None, media_type: str = "application/json") -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {media_type: {"schema": _ref(schema)}}}


# "default" also keeps FastAPI from documenting its own 422 reply, which the gateway turns into 400.
ERROR_REPLIES: dict[int | str, dict[str, Any]] = {"default": reply("an error", "Error")}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for the routes, completed with the hand-written schemas; built once."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, openapi_version=OPENAPI_VERSION, description=app.description,
            routes=app.routes,
        )
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {}).update(SCHEMAS)
        components["securitySchemes"] = SECURITY_SCHEMES
        app.openapi_schema = doc
    return app.openapi_schema
