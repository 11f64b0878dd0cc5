"""`python -m batchscore COMMAND ...`: the same as the `batchscore` console command."""
import sys

from batchscore.cli import main

sys.exit(main())
