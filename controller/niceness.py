"""A process the controller starts in a session of its own keeps the controller's niceness.

The controller runs at ``nice`` +10 (:mod:`controller.supervisor`) so that webhook intake,
the API and runs go first when the cores are busy, and its build commands and workers
inherit that. They run in sessions of their own (``start_new_session``: a build's whole
process tree, or a worker's, can be found and stopped). On kernels with autogroups
(``CONFIG_SCHED_AUTOGROUP`` and ``kernel.sched_autogroup_enabled=1``: Debian's and
Ubuntu's default), ``setsid()`` also puts the process in a new autogroup, and the
scheduler shares the CPU between autogroups first, each at the autogroup's own niceness,
which starts at 0. Measured with CPU burners on one core: two niced processes in sessions
of their own got 2x the CPU of two un-niced processes of the server's session, instead
of a fifth. Every git command, install and worker start escaped the controller's
priority that way, and competed with the HTTP process as an equal.

:func:`keep` sets a new session's autogroup to the niceness its process runs at, which
any process may do for its own user's processes (only a lower niceness needs
privilege). Where there are no autogroups (other kernels, or a cgroup with its own CPU
controller, as in a container) the file is absent or the value has no effect: niceness
alone then does what it says.
"""

from __future__ import annotations

import contextlib
import os


def keep(pid: int) -> None:
    """Give ``pid``'s autogroup (that of the session it leads) the niceness ``pid`` runs
    at. Best effort: a process that is gone, or a kernel without autogroups, is fine."""
    with contextlib.suppress(OSError):
        nice = os.getpriority(os.PRIO_PROCESS, pid)
        if nice > 0:
            with open(f"/proc/{pid}/autogroup", "w") as f:
                f.write(f"{nice}\n")
