"""The wire contract every side of hushwire shares: server, gateway, client library and CLI.

Each fact is written here once, and the proto enums are taken from the generated code, never
copied. The modules, lightest first:

- :mod:`hushwire.contract.limits`: supported sample rates, the channel limit, the longest chunk,
  the attenuation-limit rule. Pure Python, so ``server/dsp`` may import it.
- :mod:`hushwire.contract.defaults`: the clients' default target and connect timeout. Pure Python.
- :mod:`hushwire.contract.keepalive`: the HTTP/2 keepalive interval both ends keep, as grpc options.
  Pure Python.
- :mod:`hushwire.contract.webhooks`: the webhook headers and the signature's construction. Pure
  Python.
- :mod:`hushwire.contract.pcm`: the sample encodings and the PCM codec (numpy and the generated
  ``SampleEncoding`` enum; no grpc).
- :mod:`hushwire.contract.job_status`: job status names, mapped store ⇄ proto ⇄ REST in one place.
- :mod:`hushwire.contract.metadata`: the gRPC metadata keys (``authorization``,
  ``hushwire-result-token``, ``hushwire-error-code``).
- :mod:`hushwire.contract.errors`: the error codes with their gRPC status, HTTP status and default
  message (needs grpc for ``grpc.StatusCode``).

This package imports only the standard library, numpy, grpc/protobuf and the generated code (a test
walks its imports), and this ``__init__`` imports nothing, so importing one module stays as light as
that module.
"""
