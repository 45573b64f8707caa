"""A silo and a client in two network namespaces joined by a veth pair, then the client's
packets to the silo dropped: no FIN or RST (a peer's machine lost, a NAT that forgot the
connection).
Run as ``unshare -rn --fork python -m tests.runtime.wire._partition`` (root of its own user
namespace); exits 0 once the silo has let go of the dead client's connection, 1 if it still
holds it after ``GUARD`` seconds."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import struct
import subprocess
import sys
import termios
import threading
import time

from raygrain.runtime.wire import WireOptions
from tests.app import BankAccount
from tests.runtime.wire._silos import SECRET, Client, Directory, SiloInThread

GUARD = 60.0
CLONE_NEWNET = 0x40000000
OPTIONS = WireOptions(SECRET, keepalive=1.0)


def _sh(*command: str) -> None:
    subprocess.run(command, check=True)


def _unacknowledged(fd: int) -> int:
    """Bytes written on the socket ``fd`` and not yet acknowledged (Linux's SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _client_in(netns: str, directory: Directory, done: list[object]) -> None:
    """(A thread) enter ``netns``, then call the silo once and keep the connection."""
    with open(netns) as handle:
        if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")

    async def call() -> None:
        client = Client(directory, OPTIONS, ["silo-a"])
        done.append(await client.ref(BankAccount, "partitioned").deposit(1))
        await asyncio.sleep(GUARD * 2)  # never closes: its link vanishes under it

    asyncio.run(call())


def main() -> int:
    _sh("ip", "link", "set", "lo", "up")
    holder = subprocess.Popen(["unshare", "-n", "sleep", str(GUARD * 3)])
    time.sleep(0.3)
    _sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    _sh("ip", "link", "set", "v1", "netns", str(holder.pid))
    _sh("ip", "addr", "add", "10.9.0.1/24", "dev", "v0")
    _sh("ip", "link", "set", "v0", "up")
    other = f"/proc/{holder.pid}/ns/net"
    _sh("nsenter", f"--net={other}", "ip", "link", "set", "lo", "up")
    _sh("nsenter", f"--net={other}", "ip", "addr", "add", "10.9.0.2/24", "dev", "v1")
    _sh("nsenter", f"--net={other}", "ip", "link", "set", "v1", "up")
    directory = Directory()
    silo = SiloInThread("silo-a", directory, OPTIONS, ["silo-a"], listen="10.9.0.1")
    done: list[object] = []
    threading.Thread(target=_client_in, args=(other, directory, done), daemon=True).start()
    deadline = time.monotonic() + GUARD
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done == [1], done
    [connection] = silo.transport._connections  # (white-box) the client's connection
    sock = connection._writer.get_extra_info("socket")
    # Idle first: keepalive is for idle connections; what the client has not acknowledged
    # yet (its ACK of the answer dropped by the partition) is retransmission's, ~15 min.
    while _unacknowledged(sock.fileno()) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The partition: the client's packets to the silo vanish (the silo's probes still leave,
    # as they do towards a machine that is gone; with the link down, no probe would leave and
    # Linux would wait for ever to send one).
    _sh("nsenter", f"--net={other}", "ip", "route", "add", "blackhole", "10.9.0.1/32")
    while silo.transport._connections and time.monotonic() < deadline:
        time.sleep(0.1)
    held = bool(silo.transport._connections)
    print("held" if held else "let go", flush=True)
    holder.kill()
    os._exit(1 if held else 0)  # (the client thread never ends)


if __name__ == "__main__":
    sys.exit(main())
