"""``python -m memmamba.train`` = ``memmamba train``."""

import sys

from .cli import add_train_parser, standalone

sys.exit(standalone(add_train_parser, "train"))
