"""`python -m ddpm train | sample | demo` (see ddpm.cli)."""

from .cli import main

raise SystemExit(main())
