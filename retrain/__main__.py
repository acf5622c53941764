"""``python -m retrain``: same as the ``retrain`` console script."""

from retrain.cli import main

raise SystemExit(main())
