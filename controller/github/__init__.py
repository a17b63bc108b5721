"""The GitHub App: its identity, installation tokens and the REST calls Slipway makes.

This package is the only importer of PyGithub (an import-linter contract keeps it so).
Everything else talks to :class:`~controller.github.client.GitHubClient`, a small
protocol that tests replace at our own boundary, and sees only our own errors
(:mod:`controller.github.errors`).
"""
