"""The file-job pipeline, without grpc: each piece is usable (and tested) without a server process.

- :mod:`.names`: job ids, blob names, result file names, content types, display names;
- :mod:`.probe`: the header checks an upload passes before the server replies;
- :mod:`.submit`: the submit use-case (limits, spool, check, store, create the job);
- :mod:`.worker`: :func:`run_job`, one claimed job in a worker process, with a typed outcome;
- :mod:`.runner`: :class:`JobRunner`, which claims jobs and runs them in worker processes;
- :mod:`.sweeper`: :class:`Sweeper`, which removes held jobs whose hold ran out.
"""

from server.jobs.names import content_type, new_job_id, result_name
from server.jobs.probe import Probe, probe
from server.jobs.runner import JobRunner
from server.jobs.submit import (
    IDEMPOTENCY_TTL_SECONDS,
    JobLimits,
    Submission,
    Submitter,
    UploadSpec,
    audio_quota_msg,
    check_attenuation_limit,
)
from server.jobs.sweeper import Sweeper
from server.jobs.worker import BLOCK_SECONDS, JobOutcome, Outcome, run_job

__all__ = [
    "BLOCK_SECONDS", "IDEMPOTENCY_TTL_SECONDS", "JobLimits", "JobOutcome", "JobRunner", "Outcome", "Probe",
    "Submission", "Submitter", "Sweeper", "UploadSpec", "audio_quota_msg", "check_attenuation_limit", "content_type",
    "new_job_id", "probe", "result_name", "run_job",
]
