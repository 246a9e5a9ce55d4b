"""hushwire gateway: the HTTP front (DeepHearing-compatible REST) that translates requests into gRPC
calls on the hushwire server. It holds no business logic: the server checks keys, files and jobs.

    from gateway import create_app, run
    run(GatewayConfig(gateway_port=8080, grpc_target="127.0.0.1:50051"))
"""

from gateway.app import create_app, run

__all__ = ["create_app", "run"]
