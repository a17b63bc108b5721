"""Promotion gates: a built, healthy version waits until the team's app rolled out.

Waiting costs nothing. After its health check and release tasks a gated deployment
writes status ``waiting`` with its gate and deadline, in the transaction that ends its
journaled ``wait`` step, and its job ends: no thread, no build slot. Three things
decide it, and each only ever *enqueues* a ``promote`` job (:func:`~controller.gates.waiting.request_decision`):

* routing, right after it recorded a ``deployment_status`` or ``check_run`` delivery in
  ``commit_signals`` for the commit of a waiting deployment;
* the resync (:mod:`controller.gates.poll`), which asks GitHub — or the cluster — about
  every waiting deployment, because deliveries get lost, and records what it finds as
  the same signals;
* the deadline: the ``wait`` step also enqueues a ``promote`` job due at the end of
  ``--promotion-timeout`` (in the same transaction), which ends the deployment ``timed_out``
  if nothing decided it first.

The ``promote`` job runs the pipeline's journaled promote step (see
:mod:`controller.pipeline.deploy`), which commits the new current version with its step:
decisions may be enqueued twice (a delivery and a poll), the promotion happens once. A
controller killed while waiting has nothing to resume but its status: the next delivery
or resync decides.

A push that supersedes a waiting deployment while its ``promote`` job already runs
does not race it: the promoting transaction re-checks, under the environment's and
the deployment's row locks, that the deployment still waits and that no newer request
for its environment exists (:func:`~controller.gates.waiting.check_still_promotable`),
and otherwise ends it ``superseded`` without touching the current version. Whichever
of the two transactions commits first wins, so an older version never becomes current
after a newer request; the cost is two row locks in a transaction that takes one
already. (A request made while a deployment still builds does not supersede it, as
only waiting ones are: its ``wait`` step sees the newer request and ends it
``superseded`` instead of waiting, see :mod:`controller.pipeline.gate`.)

Modules: :mod:`~controller.gates.spec` (the gate grammar, durations), :mod:`~controller.gates.decide`
(pure: signals → decision), :mod:`~controller.gates.waiting` (database side),
:mod:`~controller.gates.poll` (the resync), :mod:`~controller.gates.cluster` (the
``kubernetes`` client, the one module that imports it).
"""
