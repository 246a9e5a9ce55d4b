"""The hand-written parts of the OpenAPI document.

``POST /enhance`` reads the raw request stream, so FastAPI cannot infer its body; the multipart
schema below is written to match :mod:`gateway.upload`. The document is OpenAPI 3.0 so the bundled
Swagger UI (4.x, served locally from ``swagger-ui-bundle``) renders it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.upload import CALLBACK_FIELD, IDEMPOTENCY_HEADER, OPTION_FIELD
from hushwire.contract import job_status
from hushwire.contract.limits import MIN_ATTENUATION_LIMIT_DB
from hushwire.contract.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER

__all__ = ["ENHANCE_BODY", "ENHANCE_PARAMETERS", "ERROR_REPLIES", "OPENAPI_VERSION", "RECEIVER_EXAMPLE",
           "WEBHOOKS_DOC", "openapi_document", "reply"]

# A complete receiver that checks the signature (tests/test_webhooks.py runs this very text).
RECEIVER_EXAMPLE = """\
import hashlib, hmac, json, time
from http.server import BaseHTTPRequestHandler, HTTPServer
SECRET = b"whsec_..."   # `hushwire keys webhook-secret --user UID`, or GET /me/webhook-secret
class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        fields = [f.split("=", 1) for f in self.headers["Hushwire-Signature"].split(",")]
        t = dict(fields)["t"]
        mac = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = abs(time.time() - int(t)) < 300 and any(k == "v1" and hmac.compare_digest(v, mac) for k, v in fields)
        self.send_response(204 if ok else 400); self.end_headers()
        if ok: print(self.headers["Hushwire-Event-Id"], json.loads(body)["job_status"], flush=True)
HTTPServer(("127.0.0.1", 8000), Receiver).serve_forever()
"""

WEBHOOKS_DOC = f"""\
## Webhooks

Give `{CALLBACK_FIELD}` (an `http://` or `https://` URL) with `POST /enhance`, and when each job of
the request completes or fails the server POSTs its status to that URL: the same JSON as
`GET /stat/jobs/{{job_id}}` (`result` is a freshly signed URL when the server knows the public URL).

- `Hushwire-Signature: t=<unix seconds>,v1=<hex>`: the hex HMAC-SHA256 of `"<t>.<raw body>"`, keyed
  with the UTF-8 bytes of your webhook secret (`GET /me/webhook-secret`; `POST` rotates it). For 24 h
  after a rotation there are two `v1=` values, by the new and the previous secret: accept either.
  Check `t` is recent, to refuse replays.
- `Hushwire-Event-Id`: the same at every attempt of one delivery; deduplicate on it.
- Delivery is at least once: any answer but a 2xx (or none within 10 s) is retried with exponential
  backoff for up to 24 h, the first retry within 30 s. Redirects are not followed. Only the first
  64 KiB of your answer are read.
- The job's status shows the delivery as `callback` (`state`: `waiting`, `pending`, `delivered` or
  `failed`, the number of `attempts`, and the last attempt's `last_status_code` or `last_error`).
- The server calls public addresses only unless its operator allows more (`--webhook-allow`); a URL
  it will not call is refused at once with 400 `INVALID_REQUEST`.

A receiver in Python, standard library only:

```python
{RECEIVER_EXAMPLE}```
"""

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
            "job_status": {"type": "string", "enum": list(job_status.NAMES)},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "error": {
                "type": "object",
                "description": "present only when job_status is failed",
                "properties": {"code": {"type": "string"}, "msg": {"type": "string"}},
            },
            "callback": {**_ref("Callback"), "description": "present only for a job with a callback_url"},
        },
    },
    "Callback": {
        "type": "object",
        "description": "A job's webhook delivery (see Webhooks in the API description).",
        "required": ["url", "state", "attempts"],
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "state": {"type": "string", "enum": ["waiting", "pending", "delivered", "failed"],
                      "description": "waiting: the job has not finished; pending: due or to be retried; "
                                     "delivered: a 2xx answer; failed: given up"},
            "attempts": {"type": "integer"},
            "event_id": {"type": "string", "description": "the Hushwire-Event-Id header of every attempt"},
            "last_attempt": {"type": "integer", "description": "unix seconds"},
            "last_status_code": {"type": "integer", "nullable": True,
                                 "description": "the receiver's HTTP status; null when it gave none"},
            "last_error": {"type": "string"},
            "next_attempt": {"type": "integer", "description": "unix seconds, while pending"},
        },
    },
    "WebhookSecret": {
        "type": "object",
        "required": ["secret"],
        "properties": {
            "secret": {"type": "string", "description": "the HMAC key of Hushwire-Signature (its UTF-8 bytes)"},
            "previous_valid_until": {"type": "integer", "nullable": True,
                                     "description": "unix seconds until which the previous secret signs as "
                                                    "well (after a rotation)"},
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
                   f"ids), and optionally `{OPTION_FIELD}` and `{CALLBACK_FIELD}`. Any other non-file field is "
                   "refused. The body is parsed and forwarded as a stream.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file_key": {"type": "string", "format": "binary",
                                 "description": "an audio file (WAV, FLAC, OGG, MP3, ...); any field name works"},
                    OPTION_FIELD: {"type": "number", "minimum": MIN_ATTENUATION_LIMIT_DB,
                                   "description": "maximum noise attenuation in dB for every file of the request "
                                                  "(absent: no limit; 0: pass-through)"},
                    CALLBACK_FIELD: {"type": "string", "format": "uri", "maxLength": 2048,
                                     "description": "POST each job's status here, signed, when it completes or "
                                                    "fails (see Webhooks in the API description); a URL the "
                                                    "server will not call is refused with 400 INVALID_REQUEST"},
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
        doc["info"]["description"] = f"{doc['info'].get('description', '')}\n\n{WEBHOOKS_DOC}"
        # OpenAPI 3.1's `webhooks`, as an extension (the document stays 3.0 for the bundled Swagger UI).
        doc["x-webhooks"] = {"jobFinished": {"post": {
            "summary": "A job completed or failed",
            "parameters": [
                {"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
                 "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>[,v1=<previous secret's>]"},
                {"name": EVENT_ID_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
                 "description": "the same at every attempt of one delivery"},
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobStat")}}},
            "responses": {"2XX": {"description": "delivered"},
                          "default": {"description": "retried with backoff for up to 24 h"}},
        }}}
        app.openapi_schema = doc
    return app.openapi_schema
