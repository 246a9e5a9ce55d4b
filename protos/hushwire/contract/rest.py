"""The REST shapes of a job: the ``/stat/jobs/<id>`` reply and the signed result URL (docs/design.md,
"Files over REST"). The server (webhook bodies, stored idempotent replies), the gateway and the
client library build them with these, so every side answers with the same keys.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from hushwire.contract.job_status import PENDING, STATUS_NAMES
from hushwire.v1 import jobs_pb2

__all__ = ["callback_to_dict", "job_to_dict", "result_url"]


def result_url(public_url: str, job_id: str, expires: int, sig: str) -> str:
    """The signed download URL of a completed job (docs/design.md, "Result URL")."""
    return f"{public_url.rstrip('/')}/results/{quote(job_id, safe='')}?{urlencode({'expires': expires, 'sig': sig})}"


def job_to_dict(job: jobs_pb2.Job, result_url: str | None = None) -> dict[str, object]:
    """A job in the shape of the REST status reply (docs/design.md, ``/stat/jobs/<id>``)."""
    out: dict[str, object] = {
        "model": job.model,
        "app_id": 1,
        "billed_time": round(job.billed_time, 6),
        "timestamp": job.timestamp,
        "mod_time": job.mod_time,
        "file_name": job.file_name,
        "job_id": job.job_id,
        "uid": job.uid,
        "file_key": job.file_key,
        "job_status": STATUS_NAMES.get(job.status, PENDING),
        "progress": round(job.progress, 4),
    }
    if job.status == jobs_pb2.JOB_STATUS_COMPLETED and result_url:
        out["result"] = result_url
    if job.status == jobs_pb2.JOB_STATUS_FAILED:
        out["error"] = {"code": job.error.code or "INTERNAL", "msg": job.error.msg}
    if job.HasField("callback"):
        out["callback"] = callback_to_dict(job.callback)
    return out


def callback_to_dict(cb: jobs_pb2.JobCallback) -> dict[str, object]:
    """A job's webhook state (``callback`` in its status): where, how far, and the last attempt's outcome."""
    out: dict[str, object] = {"url": cb.url, "state": cb.state, "attempts": cb.attempts}
    if cb.event_id:
        out["event_id"] = cb.event_id
    if cb.last_attempt_at:
        out["last_attempt"] = cb.last_attempt_at
        out["last_status_code"] = cb.last_status_code or None
        if cb.last_error:
            out["last_error"] = cb.last_error
    if cb.next_attempt_at:
        out["next_attempt"] = cb.next_attempt_at
    return out
