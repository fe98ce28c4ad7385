"""What a caller may change about users, grants and keys: the CLI (the machine's owner) and the admin screen.

Users are added, removed and given passwords by admins; roles on a knowledge base are granted by whoever holds
``admin`` on it; every user creates and revokes their own API keys, an admin anyone's.
"""

from __future__ import annotations

from collections.abc import Callable

from ingest.kb_names import check_name
from kb_app.access.policy import Policy
from kb_app.access.roles import Role, User
from kb_app.access.store import AccessStore, Grant, KeyRecord, UserRecord
from kb_app.errors import KnowledgeBaseNotFoundError, PermissionDeniedError


class Accounts:
    """``exists`` tells whether a knowledge base is there, so a grant cannot name a typo."""

    def __init__(self, store: AccessStore, policy: Policy, caller: User, exists: Callable[[str], bool]) -> None:
        self.store = store
        self.policy = policy
        self.caller = caller
        self._exists = exists

    def _admin_only(self, what: str) -> None:
        if not self.caller.admin:
            raise PermissionDeniedError(f"only an admin may {what}", "ask an admin, or run `kb` on the server")

    def _own_or_admin(self, user: str, what: str) -> None:
        if user != self.caller.name:
            self._admin_only(what)

    # -- users -----------------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, admin: bool = False) -> UserRecord:
        self._admin_only("add users")
        return self.store.add_user(name, password, admin)

    def user(self, name: str) -> User:
        """The user named ``name`` (:class:`UnknownUserError` if none), so the CLI can check before it prompts."""
        self._admin_only("look users up")
        return self.store.user(name)

    def users(self) -> list[UserRecord]:
        self._admin_only("list users")
        return self.store.users()

    def remove_user(self, name: str) -> None:
        self._admin_only("remove users")
        self.store.remove_user(name)

    def set_password(self, name: str, password: str) -> None:
        self._own_or_admin(name, "change another user's password")
        self.store.set_password(name, password)

    # -- grants ----------------------------------------------------------------------------------------------

    def grant(self, user: str, kb: str, role: Role | str) -> Grant:
        """Permission first: a caller who holds no grant learns nothing of whether ``kb`` exists."""
        kb = check_name(kb)
        self.policy.require(self.caller, kb, Role.ADMIN)
        self._existing(kb)
        return self.store.grant(user, kb, role if isinstance(role, Role) else Role.parse(role))

    def revoke(self, user: str, kb: str) -> bool:
        kb = check_name(kb)
        self.policy.require(self.caller, kb, Role.ADMIN)
        return self.store.revoke(user, kb)

    def grants(self, kb: str | None = None) -> list[Grant]:
        """Every grant (admins), or those on the knowledge bases the caller administers, and the caller's own."""
        grants = self.store.grants(kb=check_name(kb) if kb else None)
        if self.caller.admin:
            return grants
        return [g for g in grants if g.user == self.caller.name or self.policy.allows(self.caller, g.kb, Role.ADMIN)]

    def _existing(self, kb: str) -> None:
        if not self._exists(kb):
            raise KnowledgeBaseNotFoundError(f"there is no knowledge base named '{kb}'", "`kb list` shows them")

    # -- keys ------------------------------------------------------------------------------------------------

    def create_key(self, user: str | None = None, label: str = "") -> tuple[KeyRecord, str]:
        user = user or self.caller.name
        self._own_or_admin(user, "create keys for another user")
        return self.store.create_key(user, label)

    def keys(self, user: str | None = None) -> list[KeyRecord]:
        if user is None and self.caller.admin:
            return self.store.keys()
        user = user or self.caller.name
        self._own_or_admin(user, "list another user's keys")
        return self.store.keys(user)

    def revoke_key(self, key_id: str) -> bool:
        return self.store.revoke_key(key_id, None if self.caller.admin else self.caller.name)
