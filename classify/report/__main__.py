"""``python -m classify.report``: see :mod:`classify.report.cli`."""

import sys

from .cli import main

sys.exit(main())
