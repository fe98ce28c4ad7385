"""Chat models behind one Protocol; the backend is chosen by ``llm.backend`` in settings."""
