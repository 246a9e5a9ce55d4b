from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_ENCODING_UNSPECIFIED: _ClassVar[SampleEncoding]
    SAMPLE_ENCODING_PCM16: _ClassVar[SampleEncoding]
    SAMPLE_ENCODING_FLOAT32: _ClassVar[SampleEncoding]
SAMPLE_ENCODING_UNSPECIFIED: SampleEncoding
SAMPLE_ENCODING_PCM16: SampleEncoding
SAMPLE_ENCODING_FLOAT32: SampleEncoding

class StreamEnhanceRequest(_message.Message):
    __slots__ = ("config", "audio", "update")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: bytes
    update: StreamUpdate
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[bytes] = ..., update: _Optional[_Union[StreamUpdate, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("sample_rate_hz", "channels", "encoding", "attenuation_limit_db")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    ATTENUATION_LIMIT_DB_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    channels: int
    encoding: SampleEncoding
    attenuation_limit_db: float
    def __init__(self, sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., encoding: _Optional[_Union[SampleEncoding, str]] = ..., attenuation_limit_db: _Optional[float] = ...) -> None: ...

class StreamUpdate(_message.Message):
    __slots__ = ("attenuation_limit_db", "bypass")
    ATTENUATION_LIMIT_DB_FIELD_NUMBER: _ClassVar[int]
    BYPASS_FIELD_NUMBER: _ClassVar[int]
    attenuation_limit_db: float
    bypass: bool
    def __init__(self, attenuation_limit_db: _Optional[float] = ..., bypass: _Optional[bool] = ...) -> None: ...

class StreamEnhanceResponse(_message.Message):
    __slots__ = ("audio", "algorithmic_delay_samples", "voice_probability")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMIC_DELAY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VOICE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    algorithmic_delay_samples: int
    voice_probability: float
    def __init__(self, audio: _Optional[bytes] = ..., algorithmic_delay_samples: _Optional[int] = ..., voice_probability: _Optional[float] = ...) -> None: ...
