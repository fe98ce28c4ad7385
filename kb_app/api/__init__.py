"""The HTTP API, one module per route family; each route makes one call into the Assistant and formats it."""
