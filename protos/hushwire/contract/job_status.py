"""Job status names: one spelling for the store, the REST replies and the CLI, mapped to the proto
enum ``hushwire.v1.JobStatus`` once.

States: ``pending`` -> ``pre-processing`` (full decode, checks) -> ``processing`` (denoise, with
progress) -> ``post-processing`` (encode) -> ``completed``; or ``failed`` with an error code.
"""

from __future__ import annotations

from hushwire.v1 import jobs_pb2

__all__ = [
    "COMPLETED", "FAILED", "FINISHED", "NAMES", "PENDING", "POST_PROCESSING", "PRE_PROCESSING", "PROCESSING",
    "STATUS_NAMES", "STATUS_PROTO",
]

# The REST contract's spelling (``job_status``), which is also what the store keeps.
PENDING = "pending"
PRE_PROCESSING = "pre-processing"
PROCESSING = "processing"
POST_PROCESSING = "post-processing"
COMPLETED = "completed"
FAILED = "failed"
NAMES = (PENDING, PRE_PROCESSING, PROCESSING, POST_PROCESSING, COMPLETED, FAILED)
FINISHED = (COMPLETED, FAILED)

# name -> proto enum value, and back.
STATUS_PROTO: dict[str, int] = {
    PENDING: jobs_pb2.JOB_STATUS_PENDING,
    PRE_PROCESSING: jobs_pb2.JOB_STATUS_PRE_PROCESSING,
    PROCESSING: jobs_pb2.JOB_STATUS_PROCESSING,
    POST_PROCESSING: jobs_pb2.JOB_STATUS_POST_PROCESSING,
    COMPLETED: jobs_pb2.JOB_STATUS_COMPLETED,
    FAILED: jobs_pb2.JOB_STATUS_FAILED,
}
STATUS_NAMES: dict[int, str] = {value: name for name, value in STATUS_PROTO.items()}
