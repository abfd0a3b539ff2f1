"""`python -m mdrnet_fast ...` is the `mdrnet-fast` command."""
import sys

from .cli import main

sys.exit(main())
