"""Typed client for file jobs (``hushwire.v1.Jobs``): submit, get, list, cancel, start, download, wait."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from client.channel import ClientTLS, open_channel
from client.errors import HushwireClientError, from_rpc_error
from hushwire.contract import job_status
from hushwire.contract.defaults import TARGET
from hushwire.contract.job_status import STATUS_NAMES
from hushwire.contract.metadata import AUTHORIZATION_KEY, RESULT_TOKEN_KEY
from hushwire.contract.rest import callback_to_dict, job_to_dict, result_url
from hushwire.v1 import jobs_pb2, jobs_pb2_grpc

__all__ = ["STATUS_NAMES", "JobsClient", "callback_to_dict", "job_to_dict", "result_url"]

UPLOAD_CHUNK_BYTES = 256 * 1024
# STATUS_NAMES (proto value -> the REST spelling) and the REST shapes (job_to_dict, result_url,
# callback_to_dict) are the contract's (hushwire.contract), re-exported here.
FINISHED = tuple(job_status.STATUS_PROTO[name] for name in job_status.FINISHED)


class JobsClient:
    """Blocking client for file jobs. ``key`` goes in metadata ``authorization``; ``tls_*`` as in
    :class:`client.EnhancerClient`."""

    def __init__(self, target: str = TARGET, key: str | None = None, *, timeout: float = 30.0,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self.target = target
        self.key = key
        self.timeout = timeout
        self._channel = open_channel(target, ClientTLS.of(tls_ca, tls_cert, tls_key),
                                     options=[("grpc.max_receive_message_length", 8 << 20)])
        self._stub = jobs_pb2_grpc.JobsStub(self._channel)

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _md(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        return (((AUTHORIZATION_KEY, self.key),) if self.key else ()) + extra

    def _unary(self, method: Callable[..., object], request: object) -> object:
        try:
            return method(request, metadata=self._md(), timeout=self.timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def submit(
        self, source: str | os.PathLike[str] | BinaryIO, *, file_name: str | None = None, file_key: str = "file",
        attenuation_limit_db: float | None = None, hold: bool = False, callback_url: str | None = None,
        on_bytes: Callable[[int], None] | None = None, idempotency_key: str | None = None,
    ) -> jobs_pb2.Job:
        """Upload a file (path or binary file object) in chunks and create a job. With
        ``idempotency_key``, a retry of the same upload (after a lost reply) returns the job the first
        one made instead of a second job (``JobSpec.idempotency_key``)."""
        f: BinaryIO
        if isinstance(source, str | os.PathLike):
            own, f, default_name = True, open(source, "rb"), Path(source).name
        else:
            own, f, default_name = False, source, Path(str(getattr(source, "name", "audio"))).name
        name = file_name or default_name
        spec = jobs_pb2.JobSpec(file_name=str(name), file_key=file_key, hold=hold, callback_url=callback_url or "",
                                idempotency_key=idempotency_key or "")
        if attenuation_limit_db is not None:
            spec.options.attenuation_limit_db = attenuation_limit_db
        if own:
            spec.size_hint_bytes = os.fstat(f.fileno()).st_size

        def requests() -> Iterator[jobs_pb2.SubmitJobRequest]:
            yield jobs_pb2.SubmitJobRequest(spec=spec)
            while chunk := f.read(UPLOAD_CHUNK_BYTES):
                yield jobs_pb2.SubmitJobRequest(chunk=chunk)
                if on_bytes:
                    on_bytes(len(chunk))

        try:
            return self._stub.SubmitJob(requests(), metadata=self._md())
        except grpc.RpcError as err:
            raise self._upload_error(from_rpc_error(err)) from None
        finally:
            if own:
                f.close()

    def _upload_error(self, error: HushwireClientError) -> HushwireClientError:
        """A server that refuses the key resets the upload's stream while the file still flows; behind a
        balancer (HAProxy) that arrives as CANCELLED or INTERNAL, with or without the server's code. Ask
        the server about the key then (one unary call, only on this failure), and report a bad key as
        such."""
        if error.status not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
            return error
        try:
            jobs_pb2_grpc.AccountStub(self._channel).WhoAmI(jobs_pb2.WhoAmIRequest(), metadata=self._md(),
                                                           timeout=self.timeout)
        except grpc.RpcError as err:
            probe = from_rpc_error(err)
            if probe.code == "API_KEY_NOT_FOUND":
                return probe
        return error

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self._unary(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))

    def list(self, page_size: int = 50) -> Iterator[jobs_pb2.Job]:
        token = ""
        while True:
            resp: jobs_pb2.ListJobsResponse = self._unary(
                self._stub.ListJobs, jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token))
            yield from resp.jobs
            if not resp.next_page_token:
                return
            token = resp.next_page_token

    def cancel(self, job_id: str) -> None:
        self._unary(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))

    def start(self, job_id: str, attenuation_limit_db: float | None = None) -> jobs_pb2.Job:
        req = jobs_pb2.StartJobRequest(job_id=job_id)
        if attenuation_limit_db is not None:
            req.options.attenuation_limit_db = attenuation_limit_db
        return self._unary(self._stub.StartJob, req)

    def wait(self, job_id: str, timeout: float = 600.0, poll_s: float = 0.2,
             on_update: Callable[[jobs_pb2.Job], None] | None = None) -> jobs_pb2.Job:
        """Poll until the job is completed or failed (or ``timeout`` passes: TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if job.status in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {STATUS_NAMES.get(job.status)} after {timeout:g} s")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: str | os.PathLike[str] | None = None, *, token: str | None = None,
                 ) -> tuple[jobs_pb2.ResultInfo, Path | bytes]:
        """Download the result into ``dest`` (a file path or a directory), or return its bytes.
        With ``token`` (a result URL's ``expires.sig``) no key is needed."""
        md = self._md(((RESULT_TOKEN_KEY, token),) if token else ())
        try:
            stream = self._stub.DownloadResult(jobs_pb2.DownloadResultRequest(job_id=job_id), metadata=md,
                                               timeout=self.timeout * 10)
            first = next(stream)
            info = first.info
            if dest is None:
                return info, b"".join(r.chunk for r in stream)
            path = Path(dest)
            if path.is_dir():
                path = path / info.file_name
            tmp = path.with_name(f".{path.name}.part")
            with open(tmp, "wb") as out:
                for r in stream:
                    out.write(r.chunk)
            tmp.replace(path)
            return info, path
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        except StopIteration:
            raise HushwireClientError(None, None, "the server sent no result") from None
