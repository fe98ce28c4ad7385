"""Ingestion: load → split → embed → store. Each stage is one module with a small typed interface."""
