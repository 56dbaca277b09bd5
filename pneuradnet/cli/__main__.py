"""`python -m pneuradnet.cli`: the same as the `pneuradnet` command."""

from pneuradnet.cli import main

raise SystemExit(main())
