from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_PENDING: _ClassVar[JobStatus]
    JOB_STATUS_PRE_PROCESSING: _ClassVar[JobStatus]
    JOB_STATUS_PROCESSING: _ClassVar[JobStatus]
    JOB_STATUS_POST_PROCESSING: _ClassVar[JobStatus]
    JOB_STATUS_COMPLETED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_PENDING: JobStatus
JOB_STATUS_PRE_PROCESSING: JobStatus
JOB_STATUS_PROCESSING: JobStatus
JOB_STATUS_POST_PROCESSING: JobStatus
JOB_STATUS_COMPLETED: JobStatus
JOB_STATUS_FAILED: JobStatus

class JobOptions(_message.Message):
    __slots__ = ("attenuation_limit_db",)
    ATTENUATION_LIMIT_DB_FIELD_NUMBER: _ClassVar[int]
    attenuation_limit_db: float
    def __init__(self, attenuation_limit_db: _Optional[float] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("file_name", "file_key", "options", "hold", "size_hint_bytes", "idempotency_key", "callback_url")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_KEY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    SIZE_HINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    file_key: str
    options: JobOptions
    hold: bool
    size_hint_bytes: int
    idempotency_key: str
    callback_url: str
    def __init__(self, file_name: _Optional[str] = ..., file_key: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., hold: _Optional[bool] = ..., size_hint_bytes: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., callback_url: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    chunk: bytes
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "msg")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    code: str
    msg: str
    def __init__(self, code: _Optional[str] = ..., msg: _Optional[str] = ...) -> None: ...

class ResultLink(_message.Message):
    __slots__ = ("expires", "sig", "token")
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    expires: int
    sig: str
    token: str
    def __init__(self, expires: _Optional[int] = ..., sig: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "status", "progress", "file_name", "file_key", "uid", "billed_time", "timestamp", "mod_time", "model", "error", "result", "sample_rate_hz", "channels", "duration_seconds", "format", "options", "held", "callback", "hold_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_KEY_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    BILLED_TIME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MOD_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_FIELD_NUMBER: _ClassVar[int]
    HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: JobStatus
    progress: float
    file_name: str
    file_key: str
    uid: int
    billed_time: float
    timestamp: int
    mod_time: int
    model: str
    error: JobError
    result: ResultLink
    sample_rate_hz: int
    channels: int
    duration_seconds: float
    format: str
    options: JobOptions
    held: bool
    callback: JobCallback
    hold_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., progress: _Optional[float] = ..., file_name: _Optional[str] = ..., file_key: _Optional[str] = ..., uid: _Optional[int] = ..., billed_time: _Optional[float] = ..., timestamp: _Optional[int] = ..., mod_time: _Optional[int] = ..., model: _Optional[str] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., result: _Optional[_Union[ResultLink, _Mapping]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., format: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., held: _Optional[bool] = ..., callback: _Optional[_Union[JobCallback, _Mapping]] = ..., hold_seconds: _Optional[float] = ...) -> None: ...

class JobCallback(_message.Message):
    __slots__ = ("url", "state", "attempts", "last_status_code", "last_error", "last_attempt_at", "next_attempt_at", "event_id")
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    url: str
    state: str
    attempts: int
    last_status_code: int
    last_error: str
    last_attempt_at: int
    next_attempt_at: int
    event_id: str
    def __init__(self, url: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., last_status_code: _Optional[int] = ..., last_error: _Optional[str] = ..., last_attempt_at: _Optional[int] = ..., next_attempt_at: _Optional[int] = ..., event_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("job_id", "options", "callback_url")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    options: JobOptions
    callback_url: str
    def __init__(self, job_id: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., callback_url: _Optional[str] = ...) -> None: ...

class RenewHoldsRequest(_message.Message):
    __slots__ = ("job_ids", "idempotency_key", "reservation")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    idempotency_key: str
    reservation: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., idempotency_key: _Optional[str] = ..., reservation: _Optional[str] = ...) -> None: ...

class RenewHoldsResponse(_message.Message):
    __slots__ = ("missing_job_ids", "hold_seconds")
    MISSING_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    missing_job_ids: _containers.RepeatedScalarFieldContainer[str]
    hold_seconds: float
    def __init__(self, missing_job_ids: _Optional[_Iterable[str]] = ..., hold_seconds: _Optional[float] = ...) -> None: ...

class StartJobsRequest(_message.Message):
    __slots__ = ("job_ids", "options", "idempotency_key", "reservation", "request_sha256", "reply", "callback_url")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    options: JobOptions
    idempotency_key: str
    reservation: str
    request_sha256: str
    reply: bytes
    callback_url: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., reservation: _Optional[str] = ..., request_sha256: _Optional[str] = ..., reply: _Optional[bytes] = ..., callback_url: _Optional[str] = ...) -> None: ...

class StartJobsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReserveIdempotencyKeyRequest(_message.Message):
    __slots__ = ("idempotency_key",)
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    def __init__(self, idempotency_key: _Optional[str] = ...) -> None: ...

class ReserveIdempotencyKeyResponse(_message.Message):
    __slots__ = ("reservation", "hold_seconds", "request_sha256", "reply")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reservation: str
    hold_seconds: float
    request_sha256: str
    reply: bytes
    def __init__(self, reservation: _Optional[str] = ..., hold_seconds: _Optional[float] = ..., request_sha256: _Optional[str] = ..., reply: _Optional[bytes] = ...) -> None: ...

class ReleaseIdempotencyKeyRequest(_message.Message):
    __slots__ = ("idempotency_key", "reservation")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    reservation: str
    def __init__(self, idempotency_key: _Optional[str] = ..., reservation: _Optional[str] = ...) -> None: ...

class ReleaseIdempotencyKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownloadResultRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResultInfo(_message.Message):
    __slots__ = ("file_name", "content_type", "size_bytes")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    content_type: str
    size_bytes: int
    def __init__(self, file_name: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class DownloadResultResponse(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: ResultInfo
    chunk: bytes
    def __init__(self, info: _Optional[_Union[ResultInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class WebhookSecretRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WebhookSecret(_message.Message):
    __slots__ = ("secret", "previous_valid_until")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    secret: str
    previous_valid_until: int
    def __init__(self, secret: _Optional[str] = ..., previous_valid_until: _Optional[int] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("uid", "name", "key_id")
    UID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    uid: int
    name: str
    key_id: int
    def __init__(self, uid: _Optional[int] = ..., name: _Optional[str] = ..., key_id: _Optional[int] = ...) -> None: ...
