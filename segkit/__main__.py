"""``python -m segkit`` is the ``segkit`` command."""

from segkit.cli import main

raise SystemExit(main())
