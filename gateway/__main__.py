"""`python -m gateway` is `sekisho-gateway`."""

from gateway.cli import main

raise SystemExit(main())
