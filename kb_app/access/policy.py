"""The one permission check: the :class:`~kb_app.assistant.Assistant` calls it before it opens a knowledge base.

Grants select whole knowledge bases (their Chroma collection and lexical index); they never filter chunks, so a
caller without a grant gets no chunk of that knowledge base by any path: nothing of it is opened for them.
A caller who holds no grant is told the same thing whether the knowledge base exists or not.
"""

from __future__ import annotations

from kb_app.access.roles import OWNER, Role, User
from kb_app.access.store import AccessStore
from kb_app.errors import PermissionDeniedError


class Policy:
    """With ``auth.enabled`` false the only caller is the machine's owner, an admin: the store is never read."""

    def __init__(self, store: AccessStore) -> None:
        self.store = store

    def role(self, user: User, kb: str) -> Role | None:
        """The role ``user`` holds on ``kb``: every role for an admin, else their grant (None without one)."""
        if user.admin:
            return Role.ADMIN
        return self.store.role(user.name, kb)

    def allows(self, user: User, kb: str, need: Role) -> bool:
        held = self.role(user, kb)
        return held is not None and held >= need

    def require(self, user: User, kb: str, need: Role) -> Role:
        """The role held, if it is at least ``need``; :class:`PermissionDeniedError` otherwise."""
        held = self.role(user, kb)
        if held is None:
            raise PermissionDeniedError(
                f"you hold no grant on a knowledge base named '{kb}'",
                f"ask an admin of it: `kb grant {user.name} {kb} {need.label}`",
            )
        if held < need:
            raise PermissionDeniedError(
                f"your '{held.label}' grant on '{kb}' does not allow this (it needs '{need.label}')",
                f"ask an admin of it: `kb grant {user.name} {kb} {need.label}`",
            )
        return held

    def visible(self, user: User, names: list[str]) -> list[str]:
        """The knowledge bases ``user`` holds any grant on."""
        return [name for name in names if self.role(user, name) is not None]

    def created(self, user: User, kb: str) -> None:
        """Whoever creates a knowledge base holds ``admin`` on it."""
        if user != OWNER:
            self.store.grant(user.name, kb, Role.ADMIN)

    def deleted(self, kb: str) -> None:
        self.store.forget_kb(kb)
