"""``python -m imputmae`` is the ``imputmae`` command (Snakemake rules call it this way)."""

import sys

from imputmae.cli import main

sys.exit(main())
