"""``python -m bpcompile`` is the ``bpcompile`` command."""

import sys

from .cli import main

sys.exit(main())
