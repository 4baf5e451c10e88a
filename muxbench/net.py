"""What every layer needs to know of the network: one receive size, loopback.

The servers, the load generator and the chat client all read sockets with the
same receive size, and all refuse (or warn about) an address that is not
loopback unless told otherwise; both are decided here, once.  (The descriptor
limit is muxbench/limits.py's.)
"""

from __future__ import annotations

import ipaddress
import socket

# One receive size for every model and every client.  recv(256 KiB) costs several
# times more per call than recv(64 KiB) (allocator churn), so a model with a bigger
# buffer would be measuring malloc, not its multiplexing mechanism.
RECV_SIZE = 65536


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
    )

