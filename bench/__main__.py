"""``python -m bench`` is the ``robustax`` command."""

import sys

from bench.cli import main

sys.exit(main())
