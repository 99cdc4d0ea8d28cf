"""`python -m asset_client.cli`: the `asset` command."""

import sys

from asset_client.cli import main

sys.exit(main())
