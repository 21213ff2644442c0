"""Where the tests' PostgreSQL comes from: a URL, a testcontainers container, the local server, or a
throwaway server made with initdb/pg_ctl, tried in that order (see zdm.testing)."""

from __future__ import annotations

import atexit
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:  # imported lazily below: the plugin loads in every pytest session

    pass

DEFAULT_SOURCE_ORDER: tuple[str, ...] = ("env", "testcontainers", "local", "pg_ctl")
DEFAULT_LOCAL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TESTCONTAINERS_IMAGE = "postgres:16-alpine"
DATABASE_PREFIX = "zdm_t_"

ENV_DATABASE_URL = "ZDM_TEST_DATABASE_URL"
ENV_LOCAL_URL = "ZDM_TEST_LOCAL_URL"
ENV_SOURCES = "ZDM_TEST_POSTGRES_SOURCES"
ENV_BACKENDS = "ZDM_TEST_BACKENDS"

BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")
BACKEND_FIXTURES = {"sqlite": "zdm_sqlite_url", "postgresql": "zdm_postgres_url"}
_PROBE_TIMEOUT = 2.0  # seconds; libpq's connect_timeout minimum is 2


class PostgresServerError(RuntimeError):
    """An explicitly configured PostgreSQL server is unusable.

    Raised instead of skipping because the user asked for that server.
    """


@dataclass
class ServerSource:
    """Where the PostgreSQL test server came from, and how to let go of it.

    ``url`` is ``None`` when no server could be had; ``reason`` then says why
    (and otherwise why earlier sources were passed over).
    """

    url: str | None
    source: str
    reason: str = ""
    data_dir: str | None = None
    _closer: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def available(self) -> bool:
        """Whether a usable server was found."""
        return self.url is not None

    @property
    def display_url(self) -> str | None:
        """The URL with its password masked, safe for logs and headers."""
        return (
            None
            if self.url is None
            else make_url(self.url).render_as_string(hide_password=True)
        )

    def describe(self) -> str:
        """One line for the pytest header/summary."""
        if self.url is None:
            return f"none ({self.reason})"
        return f"{self.source} {self.display_url}"

    def close(self) -> None:
        """Stop whatever was started for this source (container, pg_ctl server); idempotent."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()


# --------------------------------------------------------------------------- #
# URL helpers and probing
# --------------------------------------------------------------------------- #


def _normalize_postgres_url(raw: str) -> URL:
    """Force the psycopg 3 driver so every source yields the same kind of URL."""
    url = make_url(raw)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(
            f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}"
        )
    return url.set(drivername="postgresql+psycopg")


def _url_str(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _probe(url: str, timeout: float = _PROBE_TIMEOUT) -> str | None:
    """Return ``None`` if ``url`` answers ``SELECT 1`` and may CREATE DATABASE, else why not."""
    engine = create_engine(
        url,
        poolclass=NullPool,
        connect_args={"connect_timeout": max(2, int(timeout + 0.999))},
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            may_create = conn.execute(
                text(
                    "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
                )
            ).scalar()
    except Exception as exc:
        return _short_error(exc)
    finally:
        engine.dispose()
    if not may_create:
        return "connected, but the role may not CREATE DATABASE"
    return None


# --------------------------------------------------------------------------- #
# Sources
# --------------------------------------------------------------------------- #


def _from_env() -> tuple[ServerSource | None, str]:
    raw = os.environ.get(ENV_DATABASE_URL, "").strip()
    if not raw:
        return None, f"{ENV_DATABASE_URL} not set"
    try:
        url = _url_str(_normalize_postgres_url(raw))
    except Exception as exc:
        raise PostgresServerError(
            f"{ENV_DATABASE_URL} is not a usable PostgreSQL URL: {exc}"
        ) from exc
    problem = _probe(url)
    if problem is not None:
        shown = make_url(url).render_as_string(hide_password=True)
        raise PostgresServerError(
            f"{ENV_DATABASE_URL} is set ({shown}) but that server is unusable: {problem}. "
            f"Fix it or unset {ENV_DATABASE_URL} to let zdm find another server."
        )
    return ServerSource(url=url, source="env"), ""


def _docker_unavailable(timeout: float = _PROBE_TIMEOUT) -> str | None:
    """Cheaply check for a Docker engine; return why it is unusable, or ``None``."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return "docker python package not installed"
    try:
        client = docker.from_env(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Docker engine answers ({_short_error(exc)})"
    return None


def _from_testcontainers() -> tuple[ServerSource | None, str]:
    problem = _docker_unavailable()
    if problem is not None:
        return None, problem
    try:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from testcontainers.postgres import PostgresContainer
    except ImportError:
        return None, "testcontainers not installed"
    container = PostgresContainer(TESTCONTAINERS_IMAGE, driver="psycopg")
    try:
        container.start()
    except Exception as exc:
        _quietly(container.stop)
        return None, f"container did not start ({_short_error(exc)})"
    url = _url_str(_normalize_postgres_url(container.get_connection_url()))
    problem = _probe(url, timeout=5)
    if problem is not None:
        _quietly(container.stop)
        return None, f"container started but is unusable ({problem})"
    return ServerSource(
        url=url, source="testcontainers", _closer=lambda: _quietly(container.stop)
    ), ""


def _from_local() -> tuple[ServerSource | None, str]:
    raw = os.environ.get(ENV_LOCAL_URL, "").strip() or DEFAULT_LOCAL_URL
    try:
        url = _url_str(_normalize_postgres_url(raw))
    except ValueError as exc:
        return None, f"{ENV_LOCAL_URL}: {exc}"
    problem = _probe(url)
    if problem is not None:
        return None, f"{make_url(url).render_as_string(hide_password=True)}: {problem}"
    return ServerSource(url=url, source="local"), ""


def _find_pg_bindir() -> Path | None:
    """Directory holding pg_ctl and initdb: PATH first, then distro locations (newest first)."""
    found = shutil.which("pg_ctl")
    if found:
        bindir = Path(found).resolve().parent
        if (bindir / "initdb").exists():
            return bindir
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") + glob.glob(
        "/usr/pgsql-*/bin/pg_ctl"
    )

    def version(path: str) -> tuple[int, ...]:
        digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
        return tuple(int(d) for d in digits)

    for pg_ctl in sorted(candidates, key=version, reverse=True):
        bindir = Path(pg_ctl).parent
        if (bindir / "initdb").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> tuple[int, int] | None:
    """initdb refuses to run as root: pick an OS user to run the throwaway server as."""
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return None


def _from_pg_ctl() -> tuple[ServerSource | None, str]:
    bindir = _find_pg_bindir()
    if bindir is None:
        return None, "pg_ctl/initdb not found on PATH or in /usr/lib/postgresql/*/bin"
    ids: tuple[int, int] | None = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ids = _unprivileged_user()
        if ids is None:
            return (
                None,
                "running as root and no 'postgres'/'nobody' OS user to run initdb as",
            )

    workdir = tempfile.mkdtemp(prefix="zdm-pg-")
    data_dir = os.path.join(workdir, "data")
    log_file = os.path.join(workdir, "postgres.log")
    if ids is not None:
        os.chown(workdir, *ids)

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            user=None if ids is None else ids[0],
            group=None if ids is None else ids[1],
            extra_groups=None if ids is None else [],
        )

    def remove_workdir() -> None:
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        done = run(
            str(bindir / "initdb"), "-D", data_dir, "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            remove_workdir()
            return None, f"initdb failed: {(done.stderr or done.stdout).strip()[-300:]}"

        started_port: int | None = None
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between check and bind
            port = _free_port()
            options = " ".join(
                shlex.quote(part)
                for part in (
                    "-p", str(port), "-k", workdir,
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                )
            )  # fmt: skip
            done = run(str(bindir / "pg_ctl"), "-D", data_dir, "-l", log_file, "-w", "-t", "30",
                       "-o", options, "start")  # fmt: skip
            if done.returncode == 0:
                started_port = port
                break
            last_error = (done.stderr or done.stdout).strip()[-300:]
        if started_port is None:
            remove_workdir()
            return None, f"pg_ctl start failed: {last_error}"
    except (OSError, subprocess.SubprocessError) as exc:
        remove_workdir()
        return None, f"throwaway server failed: {_short_error(exc)}"

    def stop() -> None:
        with suppress(OSError, subprocess.SubprocessError):
            run(
                str(bindir / "pg_ctl"),
                "-D",
                data_dir,
                "-m",
                "immediate",
                "-w",
                "stop",
                timeout=30,
            )
        remove_workdir()

    source = ServerSource(
        url=f"postgresql+psycopg://postgres@127.0.0.1:{started_port}/postgres",
        source="pg_ctl",
        data_dir=data_dir,
    )
    problem = _probe(source.url or "")
    if problem is not None:
        stop()
        return None, f"throwaway server started but is unusable ({problem})"
    # Also stop on interpreter exit, in case the session is torn down abnormally.
    source._closer = stop
    atexit.register(source.close)
    return source, ""


def _quietly(action: Callable[[], object]) -> None:
    with suppress(Exception):
        action()


_SOURCES: dict[str, Callable[[], tuple[ServerSource | None, str]]] = {
    "env": _from_env,
    "testcontainers": _from_testcontainers,
    "local": _from_local,
    "pg_ctl": _from_pg_ctl,
}


def configured_order() -> tuple[str, ...]:
    raw = os.environ.get(ENV_SOURCES, "").strip()
    if not raw:
        return DEFAULT_SOURCE_ORDER
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def resolve_postgres_server(order: Sequence[str] | None = None) -> ServerSource:
    """Find a PostgreSQL server where tests may CREATE DATABASE.

    Tries ``order`` (default: ``ZDM_TEST_POSTGRES_SOURCES`` or
    :data:`DEFAULT_SOURCE_ORDER`) and stops at the first source that answers.
    Never hangs on a missing Docker engine.  Returns a ``ServerSource`` whose
    ``url`` is ``None`` if nothing worked; raises :class:`PostgresServerError`
    if ``ZDM_TEST_DATABASE_URL`` is set but unusable.  Call ``close()`` when done.
    Uncached: the pytest fixture caches one resolution per session.
    """
    chosen = tuple(order) if order is not None else configured_order()
    unknown = [name for name in chosen if name not in _SOURCES]
    if unknown:
        raise ValueError(
            f"unknown PostgreSQL source(s) {unknown}; choose from {sorted(_SOURCES)}"
        )
    skipped: list[str] = []
    for name in chosen:
        source, why = _SOURCES[name]()
        if source is not None:
            source.reason = "; ".join(skipped)
            return source
        skipped.append(f"{name}: {why}")
    reason = (
        "no PostgreSQL server found ("
        + ("; ".join(skipped) or "no sources to try")
        + ")"
    )
    return ServerSource(url=None, source="none", reason=reason)
