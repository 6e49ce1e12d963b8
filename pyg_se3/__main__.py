"""``python -m pyg_se3``: the ``pyg-se3`` command line."""

import sys

from pyg_se3.runtime.cli import main

sys.exit(main())
