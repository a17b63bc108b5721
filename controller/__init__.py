"""Slipway: a self-hosted GitOps deploy controller for background-task workers."""

__version__ = "0.1.0"
