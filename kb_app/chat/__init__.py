"""The chat pipeline: retrieve → prompt → model → answer with citations."""
