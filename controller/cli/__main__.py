"""``python -m controller.cli``: the ``slipway`` command."""

from controller.cli import main

main()
