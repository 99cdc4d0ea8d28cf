"""Run the server: `python -m asset_service`."""

from asset_service.cli import main

raise SystemExit(main())
