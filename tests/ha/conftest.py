"""High-availability tests: the Lease adapter runs against kmock (``support.kmock_server``)."""

from support.kmock_server import kmock_emulated

__all__ = ["kmock_emulated"]
