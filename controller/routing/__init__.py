"""Routing: turn a recorded delivery into work — load → route (pure) → apply — in one
transaction.

* :mod:`webhooks.routing` holds the pure rules (a delivery and the project views → intents);
* :mod:`~controller.routing.batch` drains the routing jobs, one repository's batch per
  transaction, and isolates a failing delivery;
* :mod:`~controller.routing.apply` applies one batch's intents through
  :mod:`controller.domain`;
* :mod:`~controller.routing.access` applies the App's access changes and records signals.

Routing sits above the resync passes (:mod:`controller.reconcile`) and below the entry
points; both request deployments through :func:`controller.domain.deployments.apply_deploy`.
"""

from controller.routing.batch import MAX_BATCH_BYTES, Routed, process_delivery, route_pending

__all__ = ["MAX_BATCH_BYTES", "Routed", "process_delivery", "route_pending"]
