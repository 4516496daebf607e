"""`python -m kcap` works like `kcap`."""

import sys

from kcap.cli import main

sys.exit(main())
