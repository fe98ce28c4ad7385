"""Starts the kb web app: ``python app.py`` (same as ``kb serve``)."""

from kb_app.cli import main

if __name__ == "__main__":
    import sys

    sys.argv = [sys.argv[0], "serve", *sys.argv[1:]]
    main()
