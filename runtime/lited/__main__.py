"""`python -m lited ...`: the `lited` command, for a venv whose scripts are not on PATH."""
import sys

from lited.cli import main

sys.exit(main())
