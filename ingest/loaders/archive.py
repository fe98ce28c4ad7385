"""Zip archives, read member by member through the registry (so zips inside zips work), with limits.

Limits (``ingest.archive_*``): number of members, total unpacked size (checked against the declared sizes and again
while reading, since a hostile header can lie), compression ratio of a large member (a zip bomb's signature) and
nesting depth. Member names are labels only: nothing is ever extracted to a path taken from the archive.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ingest.loaders.base import LoadContext, safe_label
from ingest.types import Page

BOMB_MIN_BYTES = 16 * 1024 * 1024  # small members may compress well (repetitive text); only large ones are suspect
BOMB_HINT = "the archive looks like a zip bomb; unpack it yourself if you trust it and ingest the folder"
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


class ZipLoader:
    suffixes = (".zip",)
    binary = True

    def load(self, path: Path, ctx: LoadContext) -> list[Page]:
        options = ctx.options
        limit = options.archive_max_mb * 1024 * 1024
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ctx.error(f"not a readable zip archive ({exc})", "check that the file is complete") from exc
        with archive:
            members = [
                info for info in archive.infolist() if not info.is_dir() and not any(j in info.filename for j in _JUNK)
            ]
            if len(members) > options.archive_max_files:
                raise ctx.error(
                    f"the archive has {len(members)} files, over the limit of {options.archive_max_files}",
                    "raise ingest.archive_max_files, or unpack it and ingest the folder",
                )
            declared = sum(info.file_size for info in members)
            if declared > limit:
                raise ctx.error(f"the archive would unpack to {declared / 2**20:.0f} MB, over the limit", BOMB_HINT)
            for info in members:
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > BOMB_MIN_BYTES and ratio > options.archive_max_ratio:
                    raise ctx.error(f"'{safe_label(info.filename)}' is compressed {ratio:.0f}:1", BOMB_HINT)
            blocks = []
            for info in members:
                label = safe_label(info.filename)
                data = self._read(archive, info, ctx, label)
                if data is None:
                    continue
                pages = ctx.nested(label, data)
                text = "\n\n".join(p.text for p in pages if p.text.strip())
                if text:
                    blocks.append(f"File: {label}\n{text}")
        return [Page("\n\n".join(blocks))]

    def _read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, ctx: LoadContext, label: str) -> bytes | None:
        password = ctx.options.password.encode() if ctx.options.password else None
        if info.flag_bits & 0x1 and password is None:
            ctx.note(f"{label}: skipped, the archive member is password-protected (use --password)")
            return None
        cap = min(ctx.budget.remaining, ctx.options.archive_max_mb * 1024 * 1024)
        try:
            with archive.open(info, pwd=password) as member:
                data = member.read(cap + 1)
        except RuntimeError as exc:  # wrong password
            ctx.note(f"{label}: skipped ({exc})")
            return None
        except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, ValueError) as exc:
            ctx.note(f"{label}: skipped, damaged or unsupported compression ({exc})")
            return None
        if len(data) > cap:
            raise ctx.error(f"'{label}' unpacks to more than its header declares and over the limit", BOMB_HINT)
        return data
