"""hushwire client library: live streaming (sync and async) and the file commands built on it.

    from client import EnhancerClient
    with EnhancerClient("127.0.0.1:50051", key) as c:
        clean = c.enhance(noisy, 16000)          # float32 (frames, channels) or 1-D, aligned
"""

from client.errors import HushwireClientError
from client.jobs import JobsClient
from client.stream import AsyncEnhancerClient, BackendLost, EnhancerClient, StreamOutput

__all__ = ["AsyncEnhancerClient", "BackendLost", "EnhancerClient", "HushwireClientError", "JobsClient",
           "StreamOutput"]
