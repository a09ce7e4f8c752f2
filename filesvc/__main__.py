"""``python -m filesvc``: the ``filesvc`` command, where its script is not on the PATH."""

import sys

from filesvc.cli import main

sys.exit(main())
