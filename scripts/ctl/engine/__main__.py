"""`python -m ctl.engine tick`: the health-check ticker (ctl/engine/ticker.py)."""

import sys

from ctl.engine.ticker import tick

if sys.argv[1:] == ["tick"]:
    tick()
else:
    sys.exit("usage: python -m ctl.engine tick")
