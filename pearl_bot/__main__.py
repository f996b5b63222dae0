"""`python -m pearl_bot` runs the CLI."""

from pearl_bot.cli import main

raise SystemExit(main())
