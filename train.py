"""`accelerate launch train.py --config X.yaml key=value ...` == `trainer train --config X.yaml key=value ...`."""

import sys

from trainer.cli import command

if __name__ == "__main__":
    sys.exit(command(["train", *sys.argv[1:]]))
