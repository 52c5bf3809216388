"""``python -m tuner``: see :mod:`tuner.cli`."""

from tuner.cli import main

raise SystemExit(main())
