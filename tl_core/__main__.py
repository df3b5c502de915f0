"""Command line: ``python -m tl_core train|worker ...``."""

from tl_core.cli import main

raise SystemExit(main())
