"""Blobs in an S3-compatible object store (AWS S3, SeaweedFS, MinIO, Ceph RGW, ...), through boto3.

URL: ``s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT[&region=REGION]``. Without ``endpoint``
boto3 talks to AWS. Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` in the environment, ``~/.aws``, an instance role), never from the URL,
so they stay out of ``ps`` and the logs.

Writes are staged in a local scratch folder (the header checks and soundfile need a seekable
file) and uploaded with one PUT, or a multipart upload above :data:`MULTIPART_BYTES`: S3 makes an
object visible only when the PUT or the completing request succeeds, and boto3 aborts a failed
multipart upload, so a reader never sees part of a blob. Memory per transfer is bounded by
:data:`MULTIPART_BYTES` × :data:`TRANSFER_THREADS`, whatever the file's size. Downloads stream
from ``GetObject`` through the server; the store's own URLs are never handed out.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, urlencode, urlsplit

from hushwire.settings import ConfigError
from server.blobs import BlobNotFound, BlobReader, BlobStoreError

try:
    import boto3
    import boto3.exceptions
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_BOTO3 = False
else:
    HAVE_BOTO3 = True

__all__ = ["S3Blobs", "parse_s3_url"]

# boto3 logs routine events at INFO ("Found credentials in environment variables") and whole
# signed requests at DEBUG; the server logs what matters itself, so keep these to warnings.
for _name in ("boto3", "botocore", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

MULTIPART_BYTES = 8 * 1024 * 1024   # part size, and the size above which uploads go multipart
TRANSFER_THREADS = 4                 # parallel part uploads / ranged downloads per transfer
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
STALE_SCRATCH_S = 24 * 3600          # scratch files older than this are left over from a crash
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str, str | None, str | None]:
    """``(bucket, key prefix, endpoint URL or None, region or None)``; ConfigError if malformed."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ConfigError(f"blob URL {url!r}: not an s3:// URL")
    if "@" in parts.netloc:
        raise ConfigError("blob URL: credentials do not go in the URL; set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY in the environment")
    bucket = parts.netloc
    if not _BUCKET.match(bucket):
        raise ConfigError(f"blob URL {url!r}: {bucket!r} is not a valid bucket name (3-63 characters: "
                          "lower-case letters, digits, '.' and '-')")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ConfigError(f"blob URL {url!r}: unknown parameter(s) {', '.join(sorted(unknown))} "
                          "(known: endpoint, region)")
    for key, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"blob URL {url!r}: give {key} exactly once, with a value")
    endpoint = query.get("endpoint", [None])[0]
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname or ep.path not in ("", "/"):
            raise ConfigError(f"blob URL {url!r}: endpoint must look like http://HOST:PORT or https://HOST")
    prefix = parts.path.strip("/")
    return bucket, (prefix + "/" if prefix else ""), endpoint, query.get("region", [None])[0]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"HTTP {status} {err.get('Code', '')} {err.get('Message', '')}".strip()
    return str(exc) or type(exc).__name__


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":  # the bucket went away under a running server: the operator's to fix
            return False
        return code in _NOT_FOUND or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
    return False


class _Body:
    """``GetObject``'s body with network errors turned into :class:`BlobStoreError`."""

    def __init__(self, body: Any, what: str) -> None:
        self._body, self._what = body, what

    def read(self, n: int = -1, /) -> bytes:
        try:
            return cast(bytes, self._body.read(None if n < 0 else n))
        except Exception as exc:  # urllib3/botocore raise several types for a dropped connection
            raise BlobStoreError(f"{self._what}: reading failed: {_describe(exc)}") from exc

    def close(self) -> None:
        self._body.close()


class S3Blobs:
    """Blobs as objects ``<prefix><name>`` in one bucket; temporary files in ``scratch_dir``."""

    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None, region: str | None = None,
                 scratch_dir: Path | str = "spool", *, credentials: dict[str, str] | None = None) -> None:
        if not HAVE_BOTO3:
            raise ConfigError("s3:// blob URLs need boto3: pip install 'hushwire[scale]'")
        self.bucket, self.prefix, self.endpoint, self.region = bucket, prefix, endpoint, region
        self._scratch = Path(scratch_dir)
        self._scratch.mkdir(parents=True, exist_ok=True)
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,  # each streaming download holds one connection while it runs
            # Path-style requests (http://host/bucket/key) work with every S3-compatible server;
            # virtual-host style needs wildcard DNS, which a self-hosted store rarely has.
            s3={"addressing_style": "path" if endpoint else "auto"},
            # boto3 >= 1.36 adds CRC checksums that several S3-compatible servers refuse; send them
            # only where the API requires one. Payloads are covered by the SigV4 signature over http
            # (botocore signs the body's SHA-256 there) and by TLS over https.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        session = boto3.session.Session(**(credentials or {}))
        self._client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
        self._transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                        max_concurrency=TRANSFER_THREADS)

    @classmethod
    def from_url(cls, url: str, scratch_dir: Path, *, credentials: dict[str, str] | None = None) -> S3Blobs:
        bucket, prefix, endpoint, region = parse_s3_url(url)
        return cls(bucket, prefix, endpoint, region, scratch_dir, credentials=credentials)

    @property
    def url(self) -> str:
        query = urlencode({k: v for k, v in (("endpoint", self.endpoint), ("region", self.region)) if v}, safe=":/")
        return f"s3://{self.bucket}/{self.prefix}" + (f"?{query}" if query else "")

    @property
    def scratch_dir(self) -> Path:
        return self._scratch

    def _where(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint or 'AWS'}"

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad blob name {name!r}")
        return self.prefix + name

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        """One S3 request; BlobNotFound for 404, BlobStoreError (with the reason) for the rest."""
        try:
            return fn(**kw)
        except botocore.exceptions.ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(what) from None
            raise BlobStoreError(f"{self._where()}: {what}: {_describe(exc)}") from exc
        except botocore.exceptions.NoCredentialsError:
            raise BlobStoreError(f"{self._where()}: no credentials; set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY") from None
        except (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error) as exc:
            # (not OSError: a full local disk while downloading stays an OSError, for is_storage_full)
            raise BlobStoreError(f"{self._where()}: {what}: {_describe(exc)}") from exc

    def check(self) -> None:
        try:
            self._call("head bucket", self._client.head_bucket, Bucket=self.bucket)
        except BlobNotFound:
            self._create_bucket()
        except BlobStoreError as exc:
            if "HTTP 403" in str(exc):
                raise BlobStoreError(f"{self._where()}: access denied (HTTP 403); check AWS_ACCESS_KEY_ID "
                                     "and AWS_SECRET_ACCESS_KEY") from None
            raise
        # Prove that writes work now rather than at the first upload (read-only keys pass HEAD).
        probe = f".hushwire-check/{uuid.uuid4().hex}"
        self._call("write a test object", self._client.put_object, Bucket=self.bucket, Key=self._key(probe),
                   Body=b"ok")
        self.delete(probe)
        self._sweep_scratch()

    def _create_bucket(self) -> None:
        kw: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":  # AWS wants the region spelled out elsewhere
            kw["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("create bucket", self._client.create_bucket, **kw)
        except BlobStoreError as exc:  # another replica may have created it a moment ago
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise

    def _sweep_scratch(self) -> None:
        """Remove scratch files a crashed process left behind (old enough to belong to nobody)."""
        cutoff = time.time() - STALE_SCRATCH_S
        for path in self._scratch.glob("*.tmp"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def temp_path(self, name: str) -> Path:
        self._key(name)
        return self._scratch / f"{uuid.uuid4().hex}.tmp"

    def commit(self, tmp: Path, name: str) -> None:
        self._call(f"upload {name}", self._client.upload_file, Filename=str(tmp), Bucket=self.bucket,
                   Key=self._key(name), Config=self._transfer)
        tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        tmp = self.temp_path(name)
        try:
            with open(tmp, "wb") as f:
                yield f
            self.commit(tmp, name)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_copy(self, name: str) -> Iterator[Path]:
        tmp = self.temp_path(name)
        try:
            # download_file checks the object first, fetches ranges in parallel, and writes to a
            # temporary name of its own: ``tmp`` holds the whole object or nothing.
            self._call(name, self._client.download_file, Bucket=self.bucket, Key=self._key(name),
                       Filename=str(tmp), Config=self._transfer)
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, name: str) -> BlobReader:
        resp = self._call(name, self._client.get_object, Bucket=self.bucket, Key=self._key(name))
        return BlobReader(int(resp["ContentLength"]), _Body(resp["Body"], f"{self._where()}: {name}"))

    def size(self, name: str) -> int:
        resp = self._call(name, self._client.head_object, Bucket=self.bucket, Key=self._key(name))
        return int(resp["ContentLength"])

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except BlobNotFound:
            return False
        return True

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", self._client.delete_object, Bucket=self.bucket, Key=self._key(name))
