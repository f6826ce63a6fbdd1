import sys

from interact.checkpoint.cli import main

sys.exit(main())
