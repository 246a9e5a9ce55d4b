"""The submit use-case: limits, the upload spooled and checked, the blob stored, the job row made.

No grpc here: the servicer unpacks the client's ``JobSpec`` into an :class:`UploadSpec` and its
chunks into an async iterator of bytes, and maps the :class:`~server.errors.HushwireError` raised
here to a status. Everything that blocks (the spool file, the header check, the blob store, the
database) runs off the event loop; the store's calls are bounded by its timeout.

A submission either ends with a job (pending, or held) whose upload blob exists and whose bytes
count against the user's daily quotas, or with an error and nothing stored. That holds when the
database times out too: a job row that commits after the client was answered is withdrawn
(:meth:`Submitter._settle`), and a blob the client no longer waits for is deleted; under an
idempotency key the late job stays instead, for the client's retry with that key to find.

Idempotency keys: the first request with a key reserves it, and its reply is stored with the job
in one transaction; a retry with the same key and the same upload (names, bytes, options, hold)
gets that reply and creates nothing; another upload under the key, or a retry while the first
still runs, is IDEMPOTENCY_CONFLICT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hushwire.contract import limits
from server.admission import Admission
from server.blobs import BlobStore, BlobStoreError
from server.errors import HushwireError
from server.jobs.names import MAX_FILE_KEY_CHARS, MAX_FILE_NAME_CHARS, clean_name, new_job_id, upload_blob
from server.jobs.probe import probe
from server.logs import event
from server.store import (
    PENDING,
    AsyncStore,
    IdempotencyConflict,
    IdempotencyRecord,
    JobRow,
    Principal,
    Settled,
    StoreUnavailable,
    TooManyKeys,
)
from server.webhooks import WebhookPolicy, WebhookRefused

__all__ = ["IDEMPOTENCY_TTL_SECONDS", "SPOOL_WRITE_BYTES", "JobLimits", "Submission", "Submitter", "UploadSpec",
           "audio_quota_msg", "check_attenuation_limit", "check_idempotency_key", "submit_fingerprint"]

log = logging.getLogger("hushwire.jobs")

# Upload chunks are gathered up to this size before one write to the spool file (off the loop).
SPOOL_WRITE_BYTES = 1 << 20
IDEMPOTENCY_TTL_SECONDS = 24 * 3600   # how long a successful reply is kept under its idempotency key
MAX_IDEMPOTENCY_KEY_CHARS = 255
USER_LOCK_STRIPES = 64   # locks that users' job creations share (uid modulo): bounded, whatever the users


@dataclass(frozen=True)
class JobLimits:
    max_upload_bytes: int
    max_upload_seconds: float
    max_queued_jobs_per_user: int
    max_bytes_per_day_per_user: int
    max_audio_seconds_per_day_per_user: float = math.inf
    hold_seconds: float = 120.0   # a held job (or a key's reservation) with no activity for this long is swept
    max_idempotency_keys_per_user: int = 10000


@dataclass(frozen=True)
class UploadSpec:
    """What the client says about its upload before sending it."""

    file_name: str = ""
    file_key: str = ""
    hold: bool = False
    size_hint_bytes: int = 0
    attenuation_limit_db: float | None = None
    idempotency_key: str = ""   # a retry with the same key and upload gets the first reply, and creates nothing
    callback_url: str = ""      # POSTed the job's status when it finishes (server/webhooks.py)


@dataclass(frozen=True)
class Submission:
    """What a submission gives the client: a job (new, or the one an earlier request with the same
    idempotency key created), or, when that job is gone since, the reply stored for that request."""

    job: JobRow | None
    stored_reply: bytes | None = None


def check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not all(" " < ch <= "~" for ch in key):
        raise HushwireError("INVALID_REQUEST", f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible "
                            "ASCII characters")


def submit_fingerprint(spec: UploadSpec, limit_db: float | None, content_sha256: str) -> str:
    """What makes two submissions the same upload: names, bytes, options, hold and the callback URL
    (not the size hint)."""
    canonical = ["SubmitJob", spec.file_name, spec.file_key, repr(limit_db), spec.hold, content_sha256]
    if spec.callback_url:   # appended only when set: fingerprints stored before it existed stay valid
        canonical.append(spec.callback_url)
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def _bytes_quota_msg(limit: int) -> str:
    return f"the daily upload quota of {limit} bytes per user is used up"


def audio_quota_msg(limit_s: float) -> str:
    return f"the daily audio quota of {limit_s:g} s (seconds of audio x channels) per user is used up"


def check_attenuation_limit(db: float | None) -> float | None:
    """A job's attenuation limit: the contract's rule (None: no limit), refused as INVALID_REQUEST."""
    try:
        return limits.check_attenuation_limit(db)
    except ValueError as exc:
        raise HushwireError("INVALID_REQUEST", str(exc)) from None


class Submitter:
    """Takes uploads in as jobs (:meth:`submit`) and deletes job blobs off the loop (:meth:`delete_blobs`)."""

    def __init__(self, store: AsyncStore, blobs: BlobStore, limits: JobLimits,
                 webhooks: WebhookPolicy | None = None, admission: Admission | None = None) -> None:
        self._store = store
        # Ingest in this process yields to the live streams admitted here (Admission.yield_to_live).
        self._admission = admission
        self._blobs = blobs
        self.limits = limits
        self._webhooks = webhooks or WebhookPolicy()
        self._cleanups: set[asyncio.Future[None]] = set()
        # One user's job creations take turns (see _upload); users share USER_LOCK_STRIPES locks.
        self._user_locks = [asyncio.Lock() for _ in range(USER_LOCK_STRIPES)]

    async def callback_url(self, url: str) -> str | None:
        """A callback URL the policy allows (checked with DNS now; again at each delivery), or None."""
        if not url:
            return None
        try:
            await self._webhooks.check(url)
        except WebhookRefused as exc:
            raise HushwireError("INVALID_REQUEST", str(exc)) from None
        return url

    async def submit(self, principal: Principal, spec: UploadSpec, chunks: AsyncIterator[bytes], *,
                     reply: Callable[[JobRow], bytes] | None = None,
                     log_fields: Mapping[str, Any] | None = None) -> Submission:
        """Check the limits, spool and check the upload, store it, and create its job.

        With an idempotency key, a retry of an earlier success (same key, same upload) gets that
        submission's job or stored reply, and the bytes it sends are hashed and dropped; the new job's
        reply (``reply(job)``, what the client is sent) is stored under the key with the job. Raises
        HushwireError (a refusal) or StoreUnavailable (the database did not answer in time).
        ``log_fields`` go into the ``job submitted`` event (e.g. the client certificate's subject)."""
        limit_db = check_attenuation_limit(spec.attenuation_limit_db)
        key = spec.idempotency_key
        if not key:
            return Submission(await self._upload(principal, spec, limit_db, chunks, None, log_fields))
        if reply is None:
            raise ValueError("an idempotent submission needs the reply to store")
        record = await self.reserve(principal.uid, key)
        if record.reply is not None:   # a retry of an earlier success, or another upload under its key
            digest = await self._hash(chunks)
            if submit_fingerprint(spec, limit_db, digest) != record.request_sha256:
                raise HushwireError("IDEMPOTENCY_CONFLICT", "this idempotency key was used with a different upload")
            row = await self._store.get_job(record.job_ids[0]) if record.job_ids else None
            if row is not None and row.uid == principal.uid:
                return Submission(row)
            return Submission(None, record.reply)   # the job is gone since: its reply as it was
        try:
            return Submission(await self._upload(principal, spec, limit_db, chunks, (key, record.token, reply),
                                                 log_fields))
        except BaseException:
            with contextlib.suppress(Exception):   # else the reservation lapses after the hold
                await self._store.run(self._store.sync.release_key, principal.uid, key, record.token)
            raise

    async def reserve(self, uid: int, key: str) -> IdempotencyRecord:
        """The record under the user's idempotency key: an earlier success's reply, or a new reservation."""
        check_idempotency_key(key)
        limits = self.limits
        try:
            return await self._store.run(self._store.sync.reserve_key, uid, key, time.time(), limits.hold_seconds,
                                         limits.max_idempotency_keys_per_user)
        except IdempotencyConflict:
            raise HushwireError("IDEMPOTENCY_CONFLICT", "the first request with this idempotency key is still "
                                "running") from None
        except TooManyKeys as exc:
            raise HushwireError("RATE_LIMITED", str(exc)) from None

    async def _hash(self, chunks: AsyncIterator[bytes]) -> str:
        """The SHA-256 of the rest of an upload, read and dropped (a retry's bytes are never stored)."""
        digest = hashlib.sha256()
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > self.limits.max_upload_bytes:
                raise HushwireError("FILE_TOO_LARGE", f"the upload is over the limit of "
                                    f"{self.limits.max_upload_bytes} bytes")
            digest.update(chunk)
        return digest.hexdigest()

    async def _upload(self, principal: Principal, spec: UploadSpec, limit_db: float | None,
                      chunks: AsyncIterator[bytes], reserved: tuple[str, str, Callable[[JobRow], bytes]] | None,
                      log_fields: Mapping[str, Any] | None) -> JobRow:
        """Store the upload as a new job; with ``reserved`` (idempotency key, reservation token, reply
        maker) the reply is stored under the key in the job's transaction."""
        limits = self.limits
        if spec.size_hint_bytes > limits.max_upload_bytes:
            raise HushwireError("FILE_TOO_LARGE", f"{spec.size_hint_bytes} bytes is over the upload limit of "
                                f"{limits.max_upload_bytes} bytes")
        quota_left, _ = await self._room(principal.uid, spec.size_hint_bytes, 0.0)
        quota_msg = _bytes_quota_msg(limits.max_bytes_per_day_per_user)
        callback_url = await self.callback_url(spec.callback_url)
        renew = None
        if reserved is not None:
            key, token = reserved[0], reserved[1]

            async def renew() -> None:   # a long upload keeps its key's reservation
                await self._store.run(self._store.sync.renew_key, principal.uid, key, token,
                                      time.time() + limits.hold_seconds)

        job_id = new_job_id()
        blob = upload_blob(job_id)
        tmp = await asyncio.to_thread(self._blobs.temp_path, blob)
        digest = hashlib.sha256()
        try:
            size = await self._spool(tmp, chunks, min(limits.max_upload_bytes, quota_left), quota_msg, digest, renew)
            if self._admission is not None:
                await self._admission.yield_to_live()
            info = await asyncio.to_thread(probe, tmp, limits.max_upload_seconds)
            billed = info.frames / info.sample_rate * info.channels
            await self._room(principal.uid, size, billed)
            await self._commit(tmp, blob)
        finally:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        now = time.time()
        job = JobRow(
            job_id=job_id, uid=principal.uid, key_id=principal.key_id, status=PENDING, progress=0.0,
            held=spec.hold, file_name=clean_name(spec.file_name, MAX_FILE_NAME_CHARS) or "audio",
            file_key=clean_name(spec.file_key, MAX_FILE_KEY_CHARS), attenuation_limit_db=limit_db,
            created_at=now, mod_time=now, format=info.format, subtype=info.subtype, sample_rate=info.sample_rate,
            channels=info.channels, frames=info.frames, upload_bytes=size, upload_blob=blob,
            hold_expires=now + limits.hold_seconds if spec.hold else None, callback_url=callback_url,
        )
        idempotent = None
        if reserved is not None:
            idempotent = (reserved[0], reserved[1], submit_fingerprint(spec, limit_db, digest.hexdigest()),
                          reserved[2](job), now + IDEMPOTENCY_TTL_SECONDS)
        try:
            # Concurrent uploads of one user all passed the checks above against the same usage: check
            # again and create the job with this user's other submissions waiting, so that together
            # they stay within the limits. (Across replicas of a shared database, each replica's
            # concurrent uploads can still overshoot by one upload.)
            turn = self._user_locks[principal.uid % len(self._user_locks)]
            try:
                await turn.acquire()
                try:
                    await self._room(principal.uid, size, billed)
                except BaseException:
                    turn.release()
                    raise
            except BaseException:   # a refusal, the database, or the client gone: no job will own the blob
                self.delete_blobs_soon(blob)
                raise
            try:
                await self._store.run_or_undo(lambda settled: self._settle(job, settled, idempotent is not None),
                                              self._store.sync.create_job, job, idempotent, count_upload=True)
            finally:
                turn.release()
        except IdempotencyConflict:
            raise HushwireError("IDEMPOTENCY_CONFLICT", "the reservation of this idempotency key lapsed and "
                                "another request took it") from None
        event(log, "job submitted", job_id=job_id, uid=principal.uid, key_id=principal.key_id,
              file_name=job.file_name, bytes=size, billed_seconds=round(job.billed_seconds, 3), held=job.held,
              **(log_fields or {}))
        return job

    async def _room(self, uid: int, size: int, billed: float) -> tuple[int, float]:
        """Whether the user may add a job of ``size`` bytes and ``billed`` seconds (0 while unknown) today:
        RATE_LIMITED if not; else the bytes and seconds left of the daily quotas."""
        limits = self.limits
        if await self._store.count_queued(uid) >= limits.max_queued_jobs_per_user:
            raise HushwireError("RATE_LIMITED", f"at most {limits.max_queued_jobs_per_user} unfinished jobs "
                                "per user; wait for some to finish")
        bytes_today, seconds_today = await self._store.usage_today(uid)
        bytes_left = limits.max_bytes_per_day_per_user - bytes_today
        if bytes_left <= 0 or size > bytes_left:
            raise HushwireError("RATE_LIMITED", _bytes_quota_msg(limits.max_bytes_per_day_per_user))
        seconds_left = limits.max_audio_seconds_per_day_per_user - seconds_today
        if seconds_left <= 0:
            raise HushwireError("RATE_LIMITED", audio_quota_msg(limits.max_audio_seconds_per_day_per_user))
        if billed > seconds_left:
            raise HushwireError("RATE_LIMITED", f"{billed:.1f} s of audio x channels is over what is left "
                                f"today of the daily audio quota ({seconds_left:.1f} of "
                                f"{limits.max_audio_seconds_per_day_per_user:g} s per user)")
        return bytes_left, seconds_left

    async def _spool(self, tmp: Path, chunks: AsyncIterator[bytes], limit: int, quota_msg: str,
                     digest: Any, renew: Callable[[], Awaitable[None]] | None) -> int:
        """Write the upload to ``tmp`` (in writes of up to SPOOL_WRITE_BYTES, off the loop) and hash it
        into ``digest``; its size. ``renew`` runs every third of the hold time (a key's reservation)."""
        limits = self.limits
        renewed = time.monotonic()
        f: IO[bytes] = await asyncio.to_thread(open, tmp, "wb")
        try:
            size, buffered = 0, bytearray()
            async for chunk in chunks:
                if self._admission is not None:
                    await self._admission.yield_to_live()
                if renew is not None and time.monotonic() - renewed > limits.hold_seconds / 3:
                    renewed = time.monotonic()
                    await renew()
                digest.update(chunk)
                size += len(chunk)
                if size > limit:
                    if size > limits.max_upload_bytes:
                        raise HushwireError("FILE_TOO_LARGE", f"the upload is over the limit of "
                                            f"{limits.max_upload_bytes} bytes")
                    raise HushwireError("RATE_LIMITED", quota_msg)
                buffered += chunk
                if len(buffered) >= SPOOL_WRITE_BYTES:
                    await asyncio.to_thread(f.write, bytes(buffered))
                    buffered.clear()
            if buffered:
                await asyncio.to_thread(f.write, bytes(buffered))
        finally:
            await asyncio.to_thread(f.close)
        return size

    def _settle(self, job: JobRow, settled: Settled[None], idempotent: bool) -> None:
        """The client was not told of ``job`` (the database failed or timed out, or the client left):
        it must not stay behind. Runs once the store call is over, so nothing races it. A job created
        under an idempotency key stays: the client's retry with the key gets it."""
        if settled.ran and idempotent:
            event(log, "job submitted", job_id=job.job_id, uid=job.uid, key_id=job.key_id, file_name=job.file_name,
                  bytes=job.upload_bytes, billed_seconds=round(job.billed_seconds, 3), held=job.held,
                  late="created after its client gave up; kept for the retry under its idempotency key")
        elif settled.ran:
            self._track(asyncio.ensure_future(self._withdraw(job)))
        else:
            self.delete_blobs_soon(job.upload_blob)

    async def _withdraw(self, job: JobRow) -> None:
        def late(settled: Settled[bool]) -> None:   # the withdrawal finished after its caller gave up
            if settled.ran and settled.value:
                self._withdrawn(job)

        try:
            withdrawn = await self._store.run_or_undo(late, self._store.sync.withdraw_job, job)
        except StoreUnavailable as exc:  # unless the database still finishes it (late), the job stays and runs
            log.error("job %s was created after its client was told to retry, and could not be withdrawn in time: "
                      "%s", job.job_id, exc)
            return
        if withdrawn:
            self._withdrawn(job)

    def _withdrawn(self, job: JobRow) -> None:
        event(log, "job withdrawn", job_id=job.job_id, uid=job.uid, reason="created after its client gave up")
        self.delete_blobs_soon(job.upload_blob)

    async def _commit(self, tmp: Path, name: str) -> None:
        """Store an upload. If the call is cancelled (the client went away) while the store is still
        writing, the write finishes in its thread: remove the blob then, as no job will own it."""
        task = asyncio.ensure_future(asyncio.to_thread(self._blobs.commit, tmp, name))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            def _orphaned(t: asyncio.Future[None]) -> None:
                if not t.cancelled() and t.exception() is None:
                    self._track(asyncio.ensure_future(self.delete_blobs(name)))
            task.add_done_callback(_orphaned)
            raise

    def _track(self, fut: asyncio.Future[None]) -> None:
        self._cleanups.add(fut)
        fut.add_done_callback(self._cleanups.discard)

    def delete_blobs_soon(self, *names: str | None) -> None:
        """:meth:`delete_blobs` in the background (from a callback)."""
        self._track(asyncio.ensure_future(self.delete_blobs(*names)))

    async def delete_blobs(self, *names: str | None) -> None:
        """Delete blobs off the event loop. A store that fails leaves an orphan, which is logged with
        its name for the operator: the job row is gone already, so nothing will point at it."""
        for name in names:
            if name:
                try:
                    await asyncio.to_thread(self._blobs.delete, name)
                except (BlobStoreError, OSError) as exc:
                    log.error("could not delete blob %s: %s", name, exc)

    async def cleanups(self) -> None:
        """Wait for the store calls still in flight (abandoned ones included) and the blob deletions
        they lead to, until none is left (a drain does, before the process exits): a call that
        settles late can start a deletion after an earlier wait ended."""
        while True:
            await self._store.settled()
            if not self._cleanups:
                return
            await asyncio.gather(*self._cleanups, return_exceptions=True)
