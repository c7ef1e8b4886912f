"""``python -m mlplatform_retrainer``: the ``mlplatform`` command line (``cli``), as the chart,
the Makefile and the processes serving starts call it."""

from __future__ import annotations

import sys

from mlplatform_retrainer.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m mlplatform_retrainer"))
