"""A throwaway PostgreSQL server for the tests and the benchmarks: a fresh data directory, a free
port on 127.0.0.1, gone when stopped.

The server refuses to run as root, so when this process is root the data directory is handed to
the ``postgres`` user and the server binaries run through ``runuser -u postgres --``. The binaries
come from ``/usr/lib/postgresql/*/bin`` (Debian's layout) or the PATH.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ThrowawayPostgres", "find_postgres_bin"]


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (the newest version), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    return None


class ThrowawayPostgres:
    """``start()`` runs ``initdb`` and ``pg_ctl start``; ``stop()`` shuts the server down
    (``mode="fast"`` by default) and ``start()`` brings it back on the same port and data;
    ``remove()`` stops it and deletes everything. ``dsn`` is where to connect."""

    def __init__(self, bin_dir: Path, *, settings: dict[str, str] | None = None) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="raygrain-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.settings = {"max_connections": "300", **(settings or {})}
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise RuntimeError("running as root and there is no 'postgres' user") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._initialized = False
        self.running = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if not self._initialized:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",  # only initdb's own files: the server itself fsyncs every commit
            )
            self._initialized = True
        options = " ".join(
            [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}"]
            + [f"-c {name}={value}" for name, value in self.settings.items()]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed (exit {done.returncode}): {done.stderr.strip()}\n{log}"
            )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
