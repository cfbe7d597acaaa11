"""``python3 -m gateway``: the fax-gateway command (gateway/ops/cli.py)."""

import sys

from gateway.ops.cli import main

sys.exit(main())
