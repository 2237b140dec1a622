"""`python -m ca` is `sekisho-ca`."""

from ca.cli import main

raise SystemExit(main())
