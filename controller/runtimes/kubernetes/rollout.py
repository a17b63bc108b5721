"""Waiting for a version's rollout, and deciding early when waiting cannot help.

Done when the Deployment controller has seen the newest spec (observed generation) and
every desired replica is updated and available. Failed, at once, when the Deployment
reports ``ProgressDeadlineExceeded`` or a pod waits for a reason that does not pass by
waiting (an image that cannot be pulled, a crash loop, a container config error); failed
at the timeout otherwise. The error carries what the pods' statuses and events said,
newest last, so the deployment's message is the reason a user would find with kubectl.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.errors import PermanentError
from controller.runtimes.kubernetes.cluster import Cluster, Rollout
from controller.runtimes.kubernetes.render import selector_for

POLL_SECONDS = 2.0
FATAL = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
)


def rolled_out(state: Rollout) -> bool:
    return (
        state.observed_generation >= state.generation
        and state.updated >= state.replicas
        and state.available >= state.replicas
    )


def _fail(version: str, namespace: str, reasons: list[str]) -> None:
    unique = list(dict.fromkeys(r for r in reasons if r))
    raise PermanentError(
        f"version {version} did not roll out in namespace {namespace}: "
        + "; ".join(unique[-6:] or ["no reason reported"]),
        hint="see `kubectl -n " + namespace + " describe pods`",
    )


def wait_for_rollout(
    cluster: Cluster,
    namespace: str,
    name: str,
    *,
    version: str,
    timeout: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    deadline = clock() + timeout
    selector = selector_for(version)
    while True:
        state = cluster.rollout(namespace, name)
        if state is not None and rolled_out(state):
            return
        stalled = [
            f"{reason}: {message}"
            for reason, message in (state.failed_conditions if state else [])
            if reason == "ProgressDeadlineExceeded"
        ]
        problems = cluster.pod_problems(namespace, selector)
        fatal = [p for p in problems if any(reason in p for reason in FATAL)]
        if stalled or fatal:
            _fail(version, namespace, stalled + problems)
        if clock() >= deadline:
            _fail(version, namespace, [f"not available after {timeout:.0f}s", *problems])
        sleep(POLL_SECONDS)
