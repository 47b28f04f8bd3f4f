"""``python tests/loopback_ray.py start --address 127.0.0.1:PORT --node-ip-address 127.0.0.1 ...``: ``ray start``
for a *second* raylet on one machine whose sockets stay on 127.0.0.1.

Ray 2.60 replaces a loopback ``--node-ip-address`` / ``--address`` with the machine's routable address
(``services.resolve_ip_for_localhost``), after which the raylet and its workers listen on every interface. The
head keeps loopback with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the single-machine mode), but that same
variable makes ``ray start --address`` refuse to add a node. Two raylets on one machine are a test set-up only
(a real cluster has one raylet per machine), so this wrapper keeps loopback addresses as given and runs Ray's
own command line otherwise unchanged.
"""

from __future__ import annotations

import sys

import ray._private.services as services
from ray._common.network_utils import is_localhost

_resolve = services.resolve_ip_for_localhost


def _keep_loopback(host: str) -> str:
    return host if is_localhost(host) else _resolve(host)


services.resolve_ip_for_localhost = _keep_loopback

if __name__ == "__main__":
    from ray.scripts.scripts import main

    sys.argv[0] = "ray"
    sys.exit(main())
