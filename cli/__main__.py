"""``python -m hybrid.cli``: the same as the ``hybrid`` command."""

from .app import main

main()
