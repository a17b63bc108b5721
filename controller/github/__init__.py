"""GitHub: the App's identity, its set-up (manifest flow) and its storage."""
