"""`python -m evaluation.hico_map`: see evaluation/hico_map/cli.py."""
import sys

from .cli import main

sys.exit(main())
