"""`python -m lited.sdk ...` (what tools/build_sdk.py runs in the tools venv)."""
import sys

from lited.sdk.cli import main

sys.exit(main(sys.argv[1:]))
