"""``python -m medauto`` is the ``medauto`` command (e.g. where no console script is
installed, such as with ``pip install --target``)."""

import sys

from medauto.cli import main

sys.exit(main())
