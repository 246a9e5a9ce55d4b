"""The ``hushwire`` command (:func:`cli.main.main`): one entry point for every role.

It sits above ``server``, ``gateway`` and ``client`` and imports each only inside the subcommand
that needs it; none of them imports it. It ships with the full install only (``pip install .``);
the light client distribution (``hushwire-client``) carries the library, not the command.
"""
