"""The web UI (Gradio), bound to this machine only by default."""
