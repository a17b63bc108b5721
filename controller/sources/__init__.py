"""Sources: get a commit's tree (git) or an uploaded project (archive) as a plain directory.

Sources only produce immutable inputs for builders, identified by ``(sha, digest)``; they
never build or run anything. ``git.py`` is the only module in the project that imports
GitPython; ``archive.py`` holds the tar handling both sources share.
"""
