"""``python -m kb_app`` runs the CLI."""

from kb_app.cli import main

main()
