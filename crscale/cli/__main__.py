"""``python -m crscale.cli``: the ``crscale`` command."""

import sys

from crscale.cli import main

sys.exit(main())
