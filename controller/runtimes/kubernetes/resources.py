"""Workers' requests and limits: the settings, overridden per version by slipway.toml.

```toml
[kubernetes]
cpu_request = "250m"
memory_request = "512Mi"
cpu_limit = "2"
memory_limit = "1Gi"
```
Values are Kubernetes quantities, checked when a version is ensured, so a typo fails its
deployment with the key named instead of an API server's refusal later.
"""

from __future__ import annotations

import re
from typing import Any

from controller.errors import PermanentError
from controller.settings import KubernetesSettings

RESOURCE_KEYS = ("cpu_request", "memory_request", "cpu_limit", "memory_limit")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def resource_overrides(table: Any, *, where: str = "slipway.toml") -> dict[str, str]:
    """The ``[kubernetes]`` table of slipway.toml: requests and limits as quantities."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise PermanentError(f"{where}: [kubernetes] must be a table")
    unknown = sorted(set(table) - set(RESOURCE_KEYS))
    if unknown:
        raise PermanentError(
            f"{where}: [kubernetes] has unknown keys {', '.join(unknown)}",
            hint="known: " + ", ".join(RESOURCE_KEYS),
        )
    found = {}
    for key, value in table.items():
        text = str(value)
        if isinstance(value, bool) or not _QUANTITY.match(text):
            raise PermanentError(
                f"{where}: kubernetes.{key} = {text!r} is not a Kubernetes quantity",
                hint='for example "500m" CPU or "512Mi" memory',
            )
        found[key] = text
    return found


def container_resources(settings: KubernetesSettings, overrides: dict[str, str]) -> dict[str, Any]:
    def pick(key: str) -> str | None:
        value = overrides.get(key, getattr(settings, key))
        return str(value) if value else None

    requests = {"cpu": pick("cpu_request"), "memory": pick("memory_request")}
    resources: dict[str, Any] = {"requests": {k: v for k, v in requests.items() if v}}
    limits = {k: v for k, v in (("cpu", pick("cpu_limit")), ("memory", pick("memory_limit"))) if v}
    if limits:
        resources["limits"] = limits
    return resources
