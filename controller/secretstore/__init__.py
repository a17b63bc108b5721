"""Secrets at rest: encryption, environment secret keys, (later) env vars and their sync."""
