"""`python -m gateway` is the same as `tt-gateway`."""

from __future__ import annotations

import sys

from gateway.cli import main

sys.exit(main())
