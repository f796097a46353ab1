import sys

from trainer.cli import command

sys.exit(command())
