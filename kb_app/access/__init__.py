"""Who may see what: users, their grants on knowledge bases, API keys and sessions.

``roles.py`` names the roles and the caller (:class:`User`); ``store.py`` keeps users, grants, keys and sessions in
one SQLite file under ``KB_HOME``; ``policy.py`` is the one check the :class:`~kb_app.assistant.Assistant` makes
before it opens a knowledge base; ``accounts.py`` is what an admin (the CLI, the page's admin screen) may change.
"""
