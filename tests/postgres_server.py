"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start on a free loopback port, yield a URL.

Uses Debian's binaries (``/usr/lib/postgresql/<version>/bin``; package ``postgresql``). PostgreSQL refuses to
run as root, so when the tests run as root the server runs as the ``postgres`` system user (created by the
Debian package) via ``runuser``. The socket directory is the temp dir (``-k``), so no system paths are touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0]))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here (None if it can)."""
    if find_bin_dir() is None:
        return "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return ("running as root and no 'postgres' system user to run the server as (apt-get install "
                    "postgresql creates it)")
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (apt-get install util-linux)"
    try:
        import psycopg2  # noqa: F401  (the RDB driver the tests need)
    except ImportError:
        return 'psycopg2 is not installed (pip install -e ".[dev]" installs psycopg2-binary)'
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], as_postgres: bool, **kw) -> subprocess.CompletedProcess:
    if as_postgres:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@contextmanager
def postgres_server(dbname: str = "hyla_test") -> Iterator[str]:
    """Start a server, create ``dbname``, yield ``postgresql://postgres@127.0.0.1:PORT/dbname``, then stop it."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = find_bin_dir()
    as_pg = os.geteuid() == 0
    tmp = Path(tempfile.mkdtemp(prefix="hyla-pg-"))
    data = tmp / "data"
    if as_pg:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--no-sync"], as_pg)
        opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "-t", "30",
              "start"], as_pg)
        started = True
        import psycopg2

        deadline = time.time() + 20
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{dbname}"')
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            try:
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], as_pg)
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
