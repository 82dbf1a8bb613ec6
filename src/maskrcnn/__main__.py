"""`python -m maskrcnn ...` (used with torchrun: `torchrun -m maskrcnn train ...`)."""

import sys

from .cli import main

sys.exit(main())
