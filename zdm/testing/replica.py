"""A throwaway PostgreSQL primary with a streaming replica, for tests of replica-lag throttling.

Most servers a test suite reaches accept no replication connections, so this starts its own:
``initdb`` a primary on a free port (``wal_level=replica``; initdb's default ``pg_hba.conf``
trusts local replication connections), ``pg_basebackup -R`` a copy of it into another directory
(``-R`` writes ``standby.signal`` and ``primary_conninfo``), and starts that as a hot standby on
another port. Both stop, and their directories go, when the context ends. About three seconds.

``pair_unavailable()`` says why no pair can be made here (binaries missing), or None.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from zdm.testing.servers import _find_pg_bindir, _free_port, _unprivileged_user

BINARIES = ("initdb", "pg_ctl", "pg_basebackup")


@dataclass(frozen=True)
class StreamingPair:
    primary_url: str
    replica_url: str
    workdir: str


def _binaries() -> dict[str, str] | None:
    bindir = _find_pg_bindir()
    found: dict[str, str] = {}
    for name in BINARIES:
        candidate = bindir / name if bindir is not None else None
        path = str(candidate) if candidate is not None and candidate.exists() else shutil.which(name)
        if path is None:
            return None
        found[name] = path
    return found


def pair_unavailable() -> str | None:
    """Why a primary with a replica cannot be started here, or None when it can."""
    if _binaries() is None:
        return f"PostgreSQL binaries missing: {', '.join(BINARIES)} must all be on PATH or in /usr/lib/postgresql/*/bin"
    if hasattr(os, "geteuid") and os.geteuid() == 0 and _unprivileged_user() is None:
        return "running as root and no 'postgres'/'nobody' OS user to run initdb as"
    return None


@contextmanager
def streaming_pair() -> Iterator[StreamingPair]:
    """A started primary and its started streaming replica; both stopped and removed afterwards.
    Raises RuntimeError (with the tool's own message) when a step fails."""
    binaries = _binaries()
    if binaries is None:
        raise RuntimeError(pair_unavailable() or "PostgreSQL binaries missing")
    ids = _unprivileged_user() if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    workdir = tempfile.mkdtemp(prefix="zdm-replica-")
    if ids is not None:
        os.chown(workdir, *ids)
    primary_dir, replica_dir = os.path.join(workdir, "primary"), os.path.join(workdir, "replica")
    started: list[str] = []

    def run(*args: str, timeout: float = 60) -> None:
        done = subprocess.run(list(args), cwd=workdir, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL, user=None if ids is None else ids[0],
                              group=None if ids is None else ids[1], extra_groups=None if ids is None else [])
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-400:]}")

    def start(data_dir: str, port: int, *settings: str) -> None:
        options = ["-p", str(port), "-k", workdir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                   "-c", "full_page_writes=off", *settings]
        run(binaries["pg_ctl"], "-D", data_dir, "-l", data_dir + ".log", "-w", "-t", "30",
            "-o", " ".join(shlex.quote(o) for o in options), "start")
        started.append(data_dir)

    try:
        run(binaries["initdb"], "-D", primary_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
            "--no-sync")
        primary_port, replica_port = _free_port(), _free_port()
        start(primary_dir, primary_port, "-c", "wal_level=replica", "-c", "max_wal_senders=4",
              "-c", "synchronous_commit=off")
        run(binaries["pg_basebackup"], "-D", replica_dir, "-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1",
            "-p", str(primary_port), "-U", "postgres", "--no-sync")
        start(replica_dir, replica_port, "-c", "hot_standby=on", "-c", "wal_receiver_status_interval=1s",
              "-c", "hot_standby_feedback=on")
        yield StreamingPair(f"postgresql+psycopg://postgres@127.0.0.1:{primary_port}/postgres",
                            f"postgresql+psycopg://postgres@127.0.0.1:{replica_port}/postgres", workdir)
    finally:
        for data_dir in reversed(started):
            with suppress(Exception):
                run(binaries["pg_ctl"], "-D", data_dir, "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
