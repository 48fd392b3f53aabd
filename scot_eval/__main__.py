"""`python -m scot_eval ...`: the `scot-evaluate` command."""

import sys

from .cli import main

sys.exit(main(prog="python -m scot_eval"))
