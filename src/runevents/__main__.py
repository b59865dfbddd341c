"""``python -m runevents`` runs the CLI."""

from runevents.cli import main

main()
