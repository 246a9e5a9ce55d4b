"""hushwire server: the denoiser (``server.dsp``), key store, auth, servicers and the ``serve`` entry point."""
