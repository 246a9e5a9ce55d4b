"""The live stream's sans-IO core: what one resumable stream knows, and what it does next.

:class:`StreamCore` is a live stream with the network taken out. It holds the settings (the config and
the latest mid-stream updates), the progress of the current call (frames sent and received, the
algorithmic delay, whether the caller is reading), the retry budget and the backend-lost accounting,
and it decides what follows each event: open a call (again, after how long), or fail with which
error. It makes no call, starts no thread, never sleeps, and reads the time only through the clock
it is given. The blocking adapter (:class:`client.stream.LiveStream`) and the asyncio one
(:class:`client.stream.AsyncLiveStream`) do the I/O around it, so both behave alike by construction,
the way httpx shares one request/response model between its sync and async transports.

An adapter reports, for every call it opens::

    new_call()                   -> Call      it is about to open a call (raises once cancelled)
      opening(), request(call, item)          that call's requests: the settings first, then the
      takes_items(call)                       caller's items once the server accepted the call
    started(call, first)         -> note      the first response (the delay); after a resume, the
                                              StreamOutput that carries the BackendLost event
    reading(call) / output(call, response)    the caller asks for the next output / gets one
    ended(call)                               grpc says the call is over (any thread; a done callback)
    open_failed(err)             -> wait_s    opening failed: open again after wait_s, or raises
    call_failed(call, err)       -> wait_s    the call failed after it started: likewise

The decisions are the return values (how long to wait before the next call) and the exceptions
(:class:`~client.errors.HushwireClientError`, raised from the failure's context, ``from None``).
The rules:

- a lost server (``client.errors.is_retryable``: UNAVAILABLE, OVERLOADED, a proxy's trailer-less
  INTERNAL or CANCELLED) is retried with jittered exponential backoff (:class:`RetryBudget`) for
  ``budget_s`` seconds from the first failure, then the stream fails, saying so;
- never after the caller's own :meth:`StreamCore.cancel`;
- never when the caller itself stopped reading: a server ends a stream whose client reads nothing
  for its slow-consumer time (``SLOW_CONSUMER``; the server states it in the stream's initial metadata,
  :data:`hushwire.contract.metadata.SLOW_CONSUMER_SECONDS_KEY`, and :data:`SLOW_CONSUMER_SECONDS`,
  the servers' default, stands in for a server that does not), and when that status cannot be delivered
  behind the unread audio it resets the stream, which carries the status without its code's trailer
  (or, through a proxy, looks like a lost server). A call that ended with no code or as a lost server
  while the caller had read nothing for that long fails with code ``SLOW_CONSUMER`` instead;
- ``resume=False`` fails at the first error of any kind (``enhance()`` restarts the whole signal).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import grpc
import numpy as np

from client.errors import HushwireClientError, from_rpc_error, is_retryable
from hushwire.contract import pcm
from hushwire.contract.defaults import CONNECT_TIMEOUT_SECONDS
from hushwire.contract.limits import SLOW_CONSUMER_SECONDS
from hushwire.contract.pcm import ENCODINGS
from hushwire.v1 import enhancer_pb2

__all__ = ["ENCODINGS", "SLOW_CONSUMER_SECONDS", "BackendLost", "Call", "Request", "RetryBudget", "Settings",
           "StreamCore", "StreamOutput", "Update", "as_frames"]

# Jittered exponential backoff: the n-th wait is drawn from [cap/2, cap], cap = min(MAX, FIRST * 2**n).
# Half the cap is fixed so waits still grow; the random half spreads clients that were refused together
# (a replica's clients all reconnect within a second when it dies) over the next attempts.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0

Request: TypeAlias = enhancer_pb2.StreamEnhanceRequest


@dataclass(frozen=True)
class Update:
    """A mid-stream settings change; ``None`` leaves a setting as it is."""

    attenuation_limit_db: float | None = None
    bypass: bool | None = None


@dataclass(frozen=True)
class BackendLost:
    """The server of a live stream went away mid-stream, and the stream resumed on a new one.

    It arrives on the first output after the resume (``StreamOutput.backend_lost``, with no audio).
    """

    status: grpc.StatusCode | None  # how the loss looked: UNAVAILABLE, CANCELLED (HAProxy), INTERNAL (nginx)
    message: str                    # the error's details, for logs
    attempts: int                   # streams opened to resume (1: the first try worked)
    outage_s: float                 # from the loss to the new stream's first answer
    frames_lost: int                # input frames (per channel) the lost server took without answering
    delay_samples: int              # the new stream's algorithmic delay: its output starts over with it


@dataclass(frozen=True)
class StreamOutput:
    audio: np.ndarray          # float32 (frames, channels); may have 0 frames
    voice_probability: float
    backend_lost: BackendLost | None = None  # set (with no audio) when the stream just resumed elsewhere


def as_frames(x: np.ndarray, channels: int) -> np.ndarray:
    """``x`` as float32 (frames, channels); a 1-D array is one channel."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != channels:
        raise ValueError(f"audio must have shape (frames, {channels}), got {x.shape}")
    return x


def _update_request(update: Update) -> Request:
    up = enhancer_pb2.StreamUpdate()
    if update.attenuation_limit_db is not None:
        up.attenuation_limit_db = update.attenuation_limit_db
    if update.bypass is not None:
        up.bypass = update.bypass
    return Request(update=up)


class Settings:
    """What a resumed stream must restore: the config and the latest mid-stream updates."""

    def __init__(self, sample_rate: int, channels: int, encoding: int, attenuation_limit_db: float | None) -> None:
        self.sample_rate, self.channels, self.encoding = sample_rate, channels, encoding
        self.attenuation_limit_db = attenuation_limit_db
        self.bypass: bool | None = None

    def opening(self) -> list[Request]:
        """The first requests of a call: the config, then bypass if it is on."""
        config = enhancer_pb2.StreamConfig(sample_rate_hz=self.sample_rate, channels=self.channels,
                                           encoding=self.encoding)
        if self.attenuation_limit_db is not None:
            config.attenuation_limit_db = self.attenuation_limit_db
        out = [Request(config=config)]
        if self.bypass:
            out.append(_update_request(Update(bypass=True)))
        return out

    def request(self, item: np.ndarray | Update) -> tuple[Request, int]:
        """The request for ``item`` and its frames (0 for an update), noting updates."""
        if isinstance(item, Update):
            if item.attenuation_limit_db is not None:
                self.attenuation_limit_db = item.attenuation_limit_db
            if item.bypass is not None:
                self.bypass = item.bypass
            return _update_request(item), 0
        x = as_frames(item, self.channels)
        return Request(audio=pcm.encode(x, self.encoding)), x.shape[0]


class RetryBudget:
    """Jittered exponential backoff for ``budget_s`` seconds, counted from the first failure."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.budget_s = budget_s
        self._clock, self._rng = clock, rng
        self.deadline: float | None = None
        self.failures = 0

    def left(self) -> float:
        """Seconds left in the budget (all of it before the first failure)."""
        return self.budget_s if self.deadline is None else max(0.0, self.deadline - self._clock())

    def wait_after(self, err: HushwireClientError) -> float | None:
        """Seconds to wait before trying again after ``err``; None when ``err`` is final (not
        retryable, or the budget is spent)."""
        if not is_retryable(err):
            return None
        now = self._clock()
        self.deadline = self.deadline if self.deadline is not None else now + self.budget_s
        if now >= self.deadline:
            return None
        cap = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return min(cap * (0.5 + 0.5 * self._rng()), self.deadline - now)


@dataclass(eq=False)
class Call:
    """One gRPC call of a stream (a resumed stream has several, one after the other)."""

    idle_since: float      # when the caller last got an output (or the call began)
    accepted: bool = False  # the server answered its config: the caller's items may go to it
    over: bool = False     # it failed, was cancelled or replaced: no more items go to it
    sent: int = 0          # input frames (per channel) sent on this call
    received: int = 0      # output frames received on it
    delay: int = 0         # its algorithmic delay, from its first response
    reading: bool = True   # the caller is waiting for this call's next response
    idle_at_end: float | None = None  # how long the caller had read nothing when grpc ended the call
    longest_idle: float = 0.0  # the longest the caller read nothing on this call, before it read again
    slow_consumer_s: float = SLOW_CONSUMER_SECONDS  # its server's slow-consumer time, as the server stated it

    def frames_lost(self) -> int:
        """Input the server took without answering (its output lags the input by ``delay``)."""
        return max(0, self.sent - max(0, self.received - self.delay))


def _error(failure: grpc.RpcError | HushwireClientError) -> HushwireClientError:
    return failure if isinstance(failure, HushwireClientError) else from_rpc_error(failure)


class StreamCore:
    """One live stream's state and decisions (see the module docstring); no I/O."""

    def __init__(self, settings: Settings, *, resume: bool = True, target: str = "",
                 budget_s: float = CONNECT_TIMEOUT_SECONDS, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.resume = resume
        self.target = target
        self.budget_s = budget_s
        self.cancelled = False
        self.reconnects: list[BackendLost] = []
        self.call: Call | None = None
        self._clock, self._rng = clock, rng
        self._retry = RetryBudget(budget_s, clock, rng)
        self._attempts = 0
        self._lost: tuple[HushwireClientError, Call, float] | None = None  # being resumed: (error, call, when)
        # Called whenever a call's state changes, so an adapter's request thread or task waiting in
        # takes_items() looks again (the adapter sets it; the core itself never waits).
        self.wake: Callable[[], None] = lambda: None

    @property
    def delay_samples(self) -> int:
        """The current call's algorithmic delay (a resumed stream's output starts over with it)."""
        return self.call.delay if self.call is not None else 0

    def health_timeout(self) -> float:
        """How long a health check before the next call may wait: what is left of the budget."""
        return max(0.1, self._retry.left())

    def cancel(self) -> None:
        """The caller ended the stream: it is never opened again."""
        self.cancelled = True
        if self.call is not None:
            self._over(self.call)

    def cancelled_error(self) -> HushwireClientError:
        return HushwireClientError(grpc.StatusCode.CANCELLED, None, "the stream was cancelled by its caller")

    # -- a call ---------------------------------------------------------------------------------------

    def new_call(self) -> Call:
        if self.cancelled:
            raise self.cancelled_error()
        self._attempts += 1
        if self.call is not None:
            self._over(self.call)
        self.call = Call(self._clock())
        return self.call

    def takes_items(self, call: Call) -> bool | None:
        """May ``call`` take the caller's next item? None: not yet (wait until the server accepts the
        call, so a refused call consumes nothing); False: never (it is over: the item is kept for the
        next call); True: yes. The adapters wait on :attr:`wake`, which is called at every change."""
        if call.over or call is not self.call:
            return False
        return True if call.accepted else None

    def _over(self, call: Call) -> None:
        call.over = True
        self.wake()

    def opening(self) -> list[Request]:
        return self.settings.opening()

    def request(self, call: Call, item: np.ndarray | Update) -> Request:
        req, frames = self.settings.request(item)
        call.sent += frames
        return req

    def started(self, call: Call, first: enhancer_pb2.StreamEnhanceResponse,
                slow_consumer_s: float | None = None) -> StreamOutput | None:
        """The call's first response arrived, with the slow-consumer time its server stated in the
        initial metadata (None: it stated none). After a resume, returns the output announcing it."""
        call.delay = first.algorithmic_delay_samples
        if slow_consumer_s is not None:
            call.slow_consumer_s = slow_consumer_s
        call.accepted = True
        self.wake()
        self._handed(call)
        self._retry = RetryBudget(self.budget_s, self._clock, self._rng)
        attempts, self._attempts = self._attempts, 0
        if self._lost is None:
            return None
        err, old, when = self._lost
        self._lost = None
        event = BackendLost(err.status, err.msg, attempts, self._clock() - when, old.frames_lost(), call.delay)
        self.reconnects.append(event)
        return StreamOutput(np.zeros((0, self.settings.channels), np.float32), 0.0, backend_lost=event)

    def reading(self, call: Call) -> None:
        if not call.reading:
            call.longest_idle = max(call.longest_idle, self._clock() - call.idle_since)
        call.reading = True

    def output(self, call: Call, response: enhancer_pb2.StreamEnhanceResponse) -> StreamOutput:
        audio = pcm.decode(response.audio, self.settings.encoding, self.settings.channels)
        call.received += audio.shape[0]
        self._handed(call)
        return StreamOutput(audio, response.voice_probability)

    def _handed(self, call: Call) -> None:
        call.reading = False
        call.idle_since = self._clock()

    def ended(self, call: Call) -> None:
        if call.idle_at_end is None:
            call.idle_at_end = 0.0 if call.reading else self._clock() - call.idle_since

    # -- decisions ------------------------------------------------------------------------------------

    def open_failed(self, failure: grpc.RpcError | HushwireClientError) -> float:
        """Opening a call failed (the first, or one that resumes a lost stream): the seconds to wait
        before the next try, or raises the error to give the caller."""
        err = _error(failure)
        if self.call is not None:
            self._over(self.call)
        if self.cancelled:
            raise self.cancelled_error() from None
        if not self.resume:
            raise err from None
        wait = self._retry.wait_after(err)
        if wait is not None:
            return wait
        if self._lost is None or not is_retryable(err):  # e.g. the key was revoked meanwhile
            raise err from None
        lost = self._lost[0]
        raise HushwireClientError(
            err.status, err.code,
            f"lost the hushwire server at {self.target} mid-stream ({lost}) and could not resume the stream "
            f"within {self.budget_s:g} s ({self._attempts} attempt(s); last: {err.msg or err.status})") from None

    def call_failed(self, call: Call, failure: grpc.RpcError | HushwireClientError) -> float:
        """A started call failed: resume on a new call (returns the wait, 0), or raises."""
        err = _error(failure)
        self._over(call)
        if self.cancelled:
            raise self.cancelled_error() from None
        idle = call.idle_at_end or 0.0  # grpc runs the done callback as the call ends, long before a
        # caller that stopped reading comes back to see the error; None only if it never ran
        patience = call.slow_consumer_s
        if idle >= patience and is_retryable(err):
            raise HushwireClientError(
                err.status, "SLOW_CONSUMER",
                f"the stream ended ({err}) while its caller had read no output for {idle:.1f} s; its server ends "
                f"a stream whose client stops reading for {patience:g} s, so it was not resumed") from None
        # A server's own reset of the stream carries its status (RESOURCE_EXHAUSTED "SLOW_CONSUMER: ...")
        # without the code's trailer, and grpc holds it until the caller has read what was buffered.
        away = max(idle, call.longest_idle)
        if err.code is None and not is_retryable(err) and away >= patience:
            raise HushwireClientError(
                err.status, "SLOW_CONSUMER",
                f"the stream ended ({err}) after its caller had read no output for {away:.1f} s; its server ends "
                f"a stream whose client stops reading for {patience:g} s") from None
        if not self.resume or not is_retryable(err):
            raise err from None
        self._lost = (err, call, self._clock())
        self._attempts = 0
        return 0.0  # at once: behind a balancer, the new call goes to another replica
