"""Defaults of the contract that clients rely on (docs/design.md, "Command line and configuration").

The settings table (``hushwire.settings``) and every client (the library, ``hushwire mic``, the
gateway's connection to the server) take them from here, so each is written once. Pure Python.
"""

from __future__ import annotations

__all__ = ["CONNECT_TIMEOUT_SECONDS", "TARGET"]

# The server a client talks to when none is given (``--target``; the gateway's ``--grpc-target``).
TARGET = "127.0.0.1:50051"
# How long a client waits for the server, and keeps retrying a lost or full one, before it gives up
# with a clear message (``--connect-timeout``).
CONNECT_TIMEOUT_SECONDS = 10.0
