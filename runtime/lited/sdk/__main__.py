"""`python -m lited.sdk ...` (what tools/build_sdk.py runs in the tools venv)."""
import sys

from lited.utf8 import in_utf8_mode

in_utf8_mode("lited.sdk")  # before anything reads a path or a labels file

from lited.sdk.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
