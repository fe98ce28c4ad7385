"""Where files are read: one loader per format family, chosen by suffix (checked against the content).

Every loader returns pages of plain text; failures raise errors that name the file and say what to do. Loaders run
inside worker processes (``ingest.workers``) during an ingest, so a hostile file cannot take the app down.
"""

from ingest.loaders.base import LoadContext, Loader, LoadOptions
from ingest.loaders.registry import DEFAULT_LOADERS, LoaderRegistry, file_sha256
from ingest.loaders.text import decode_text, detect_encoding

__all__ = [
    "DEFAULT_LOADERS",
    "LoadContext",
    "LoadOptions",
    "Loader",
    "LoaderRegistry",
    "decode_text",
    "detect_encoding",
    "file_sha256",
]
