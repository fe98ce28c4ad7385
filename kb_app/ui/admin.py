"""The page's admin screen: users (global admins) and grants (admins of a knowledge base).

Shown only to an admin, or to the admin of the selected knowledge base, and filled per visitor; every change goes
through ``assistant.as_user(visitor).accounts``, which decides who may do what, so a handler called by a script
with the screen hidden is refused all the same. Names shown in Markdown are escaped like any other text.
"""

from __future__ import annotations

import gradio as gr

from kb_app.access.roles import Role
from kb_app.assistant import Assistant
from kb_app.ui.common import PRIVATE, acting, escape_markdown, problem
from kb_app.ui.i18n import t

USER_HEADERS = ["user", "admin"]
GRANT_HEADERS = ["user", "knowledge base", "role"]
ROLE_CHOICES = [role.label for role in Role]


def administered(me: Assistant) -> list[str]:
    """The knowledge bases on which ``me`` may grant roles."""
    return [kb for kb in me.list_knowledge_bases() if me.role(kb) == Role.ADMIN]


def user_rows(me: Assistant) -> list[list]:
    return [[u.name, "admin" if u.admin else ""] for u in me.accounts.users()] if me.user.admin else []


def grant_rows(me: Assistant) -> list[list]:
    return [[g.user, g.kb, g.role.label] for g in me.accounts.grants()]


class AdminScreen:
    """The admin tab, built inside the page's ``gr.Tabs``; :attr:`outputs` are what :meth:`view` fills."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant
        with gr.Tab(t("tab.admin"), visible=False, elem_id="admin-tab") as self.tab:
            status = gr.Markdown(elem_id="admin-status")
            with gr.Column(visible=False) as self.users_box:
                gr.Markdown(t("admin.users"))
                self.users = gr.Dataframe(headers=USER_HEADERS, value=[], interactive=False, elem_id="users")
                with gr.Row():
                    name = gr.Textbox(label=t("admin.user_name"), elem_id="user-name")
                    password = gr.Textbox(label=t("admin.password"), type="password", elem_id="user-password")
                    is_admin = gr.Checkbox(label=t("admin.admin"), elem_id="user-admin")
                with gr.Row():
                    add = gr.Button(t("admin.add_user"), elem_id="add-user")
                    remove = gr.Button(t("admin.remove_user"), variant="stop", elem_id="remove-user")
            gr.Markdown(t("admin.grants"))
            self.grants = gr.Dataframe(headers=GRANT_HEADERS, value=[], interactive=False, elem_id="grants")
            with gr.Row():
                grantee = gr.Textbox(label=t("admin.user"), elem_id="grant-user")
                self.grant_kb = gr.Dropdown(
                    choices=[], allow_custom_value=True, label=t("admin.knowledge_base"), elem_id="grant-kb"
                )
                role = gr.Dropdown(
                    choices=ROLE_CHOICES, value=Role.READ.label, label=t("admin.role"), elem_id="grant-role"
                )
            with gr.Row():
                grant = gr.Button(t("admin.grant"), variant="primary", elem_id="grant")
                revoke = gr.Button(t("admin.revoke"), elem_id="revoke")

        users_out = [status, self.users, self.grants, password]
        add.click(self.on_add, inputs=[name, password, is_admin], outputs=users_out, api_name="add_user", **PRIVATE)
        remove.click(self.on_remove, inputs=name, outputs=users_out, api_name="remove_user", **PRIVATE)
        grant_in, grants_out = [grantee, self.grant_kb, role], [status, self.grants]
        grant.click(self.on_grant, inputs=grant_in, outputs=grants_out, api_name="grant", **PRIVATE)
        revoke.click(self.on_revoke, inputs=grant_in[:2], outputs=grants_out, api_name="revoke", **PRIVATE)

    @property
    def outputs(self) -> list:
        return [self.tab, self.users_box, self.users, self.grants, self.grant_kb]

    @staticmethod
    def hidden() -> tuple:
        """The screen for someone who may administer nothing here: not shown, and holding no user or grant."""
        return gr.update(visible=False), gr.update(visible=False), [], [], gr.update(choices=[], value=None)

    def view(self, me: Assistant) -> tuple:
        """The screen for ``me``: hidden unless they may administer something."""
        kbs = administered(me)
        if not me.user.admin and not kbs:
            return self.hidden()
        selected = kbs[0] if kbs else None
        return (
            gr.update(visible=True),
            gr.update(visible=me.user.admin),
            user_rows(me),
            grant_rows(me),
            gr.update(choices=kbs, value=selected),
        )

    def on_add(self, name: str, password: str, admin: bool, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            record = me.accounts.add_user(name, password, admin)
            done = f"added **{escape_markdown(record.name)}**" + (" (admin)" if record.admin else "")
            return done, user_rows(me), grant_rows(me), ""
        except Exception as exc:
            return problem(exc), gr.update(), gr.update(), ""

    def on_remove(self, name: str, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            me.accounts.remove_user(name.strip())
            return f"removed **{escape_markdown(name.strip())}**", user_rows(me), grant_rows(me), gr.update()
        except Exception as exc:
            return problem(exc), gr.update(), gr.update(), gr.update()

    def on_grant(self, user: str, kb: str, role: str, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            done = me.accounts.grant(user.strip(), kb or "", role)
            shown = f"**{escape_markdown(done.user)}** holds **{done.role.label}** on **{escape_markdown(done.kb)}**"
            return shown, grant_rows(me)
        except Exception as exc:
            return problem(exc), gr.update()

    def on_revoke(self, user: str, kb: str, request: gr.Request):
        try:
            me = acting(self.assistant, request)
            user = user.strip()
            revoked = me.accounts.revoke(user, kb or "")
            shown = "revoked" if revoked else "there was no grant to revoke for"
            return f"{shown} **{escape_markdown(user)}** on **{escape_markdown(kb)}**", grant_rows(me)
        except Exception as exc:
            return problem(exc), gr.update()
