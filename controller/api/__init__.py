"""The management API (FastAPI): one router per resource, bearer-token auth."""
