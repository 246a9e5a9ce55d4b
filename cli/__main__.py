"""``python -m cli``: the ``hushwire`` command."""

import sys

from cli.main import main

sys.exit(main())
