"""``python -m rx_discovery``: the ``rx-discovery`` command line (see :mod:`rx_discovery.cli`)."""

import sys

from rx_discovery.cli import main

if __name__ == "__main__":
    sys.exit(main())
