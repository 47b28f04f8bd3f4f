"""``python -m train.loopback_torchrun ARGS``: ``torchrun ARGS`` whose TCP stores listen on 127.0.0.1 only.

For one machine (the demo, the tests, a workstation): every socket of the run stays on loopback. Give
torchrun loopback addresses too (``--standalone`` or ``--rdzv_endpoint 127.0.0.1:PORT --local_addr 127.0.0.1``,
or ``--master_addr 127.0.0.1``) and set ``GLOO_SOCKET_IFNAME=lo`` for gloo's own listeners.

torchrun's c10d rendezvous store (the agent hosting ``--rdzv_endpoint``) and the agent-level store of the
rank-0 node bind every interface whatever host name they are given (torch 2.13). Tests must keep every
socket on loopback, so this wrapper makes each store *server* listen on a socket it bound to 127.0.0.1
itself (``TCPStore(master_listen_fd=...)``). Clients are unchanged. A port already taken raises
``RuntimeError``, which torch's c10d backend takes as "another agent hosts the store" (it then connects).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

_TCPStore = dist.TCPStore


class LoopbackTCPStore(_TCPStore):  # type: ignore[misc, valid-type]
    def __init__(self, host_name: str, port: int, *args: Any, **kwargs: Any) -> None:
        is_master = kwargs.get("is_master", args[1] if len(args) > 1 else False)
        if is_master and kwargs.get("master_listen_fd") is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", port))
            except OSError as exc:
                listener.close()
                raise RuntimeError(f"127.0.0.1:{port} is taken: {exc}") from exc
            listener.listen(512)
            port = listener.getsockname()[1]
            kwargs["master_listen_fd"] = listener.detach()
        super().__init__(host_name, port, *args, **kwargs)


dist.TCPStore = LoopbackTCPStore
c10d_rendezvous_backend.TCPStore = LoopbackTCPStore

if __name__ == "__main__":
    from torch.distributed.run import main

    sys.argv[0] = "torchrun"
    sys.exit(main())
