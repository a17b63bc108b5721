"""Domain operations, inside a caller's transaction, one module per concept:
:mod:`~controller.domain.projects`, :mod:`~controller.domain.environments`,
:mod:`~controller.domain.deployments` (requests, and applying a deploy intent) and
:mod:`~controller.domain.events`.

Routing, the API and the resync passes all go through these, so the rules (newest wins,
archived branches take no work, disconnected projects stop deploying, a tracked commit
deploys once per environment) live in one place. They read through the query functions
of :mod:`controller.store` and queue work through :mod:`controller.queue`; they never
build, run or serve.
"""
