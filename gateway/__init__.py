"""hushwire gateway: the HTTP/WebSocket front (DeepHearing-compatible REST) that translates to gRPC.

It arrives with the file pipeline (issue 5); it holds no business logic of its own.
"""
