"""``python -m edgemm`` runs the CLI."""

from edgemm.cli import main

main()
