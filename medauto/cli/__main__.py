"""``python -m medauto.cli`` is the ``medauto`` command."""

import sys

from medauto.cli import main

sys.exit(main())
