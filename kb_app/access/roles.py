"""Roles on a knowledge base and the caller they are checked for.

Roles are ordered: each one allows what the ones below it allow. ``ask`` gets answers with file and page citations
but never passage text or the file itself; ``read`` also sees passages (search, the sources under an answer) and
opens source files; ``write`` uploads and deletes documents; ``admin`` also grants roles and deletes the knowledge
base. Whoever creates a knowledge base holds ``admin`` on it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from kb_app.errors import AccessError


class Role(enum.IntEnum):
    ASK = 1
    READ = 2
    WRITE = 3
    ADMIN = 4

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(role.label for role in cls)
            raise AccessError(f"'{text}' is not a role", f"choose one of: {choices}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class User:
    """The caller every check is made for. ``admin`` users (and the machine's owner) hold every role everywhere."""

    name: str
    admin: bool = False


# The local CLI and a server with auth.enabled false act as the machine's owner, as kb always did.
OWNER = User("owner", admin=True)

_USER_NAME = re.compile(r"^[\w.@-]{1,64}$")


def check_user_name(name: str) -> str:
    """A user name: letters (any script), digits and ``. _ - @``, at most 64; ``owner`` is reserved."""
    name = name.strip()
    if not _USER_NAME.match(name) or name == OWNER.name:
        raise AccessError(
            f"'{name[:80]}' is not a user name kb accepts",
            "use letters, digits and . _ - @ (at most 64 characters); 'owner' is reserved for this machine's owner",
        )
    return name
