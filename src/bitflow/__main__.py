"""``python -m bitflow`` works like the ``bitflow`` command."""

from .cli import main

raise SystemExit(main())
