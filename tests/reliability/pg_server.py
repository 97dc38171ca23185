"""A private PostgreSQL server that a test owns: its own `initdb` data directory and port,
started and stopped by the test (`stop("immediate")` is a crash: no shutdown checkpoint, every
connection cut), so a test can take the database away in the middle of a run.

PostgreSQL refuses to run as root: as root the server runs as the `postgres` OS user through
`runuser -u postgres --`, in a directory under the system temp directory that user can enter
(pytest's `tmp_path` is private to root). Binaries are found with TRIALFLOW_TEST_PG_BIN, else
`pg_config --bindir`, else /usr/lib/postgresql/*/bin. Without them the tests skip and say why;
with CI=true they fail instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RUN_AS = "postgres"  # the OS user the server runs as when this process is root


def find_bindir() -> Path | None:
    configured = os.environ.get("TRIALFLOW_TEST_PG_BIN")
    candidates: list[str] = [configured] if configured else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def problem() -> str | None:
    """Why a private server cannot run here, or None."""
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) found"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as another user"
        done = subprocess.run(["id", "-u", RUN_AS], capture_output=True, check=False)
        if done.returncode != 0:
            return f"running as root and there is no OS user {RUN_AS!r} to run PostgreSQL"
    return None


def require() -> None:
    found = problem()
    if found is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {found}: the database fault tests must run in CI.")
    pytest.skip(f"{found}; install PostgreSQL's server package to run this test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateServer:
    """One PostgreSQL cluster in `root`, listening on 127.0.0.1:`port` (trust authentication,
    superuser `postgres`)."""

    root: Path
    port: int
    bindir: Path
    log: Path = field(init=False)
    data: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    # -------------------------------------------------------------- processes
    def _run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}\n{self.log_tail()}")
        return done.stdout + done.stderr

    def initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        """Start and wait until it accepts connections (pg_ctl -w)."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate`: every server process quits at once, as in a crash (the next start
        replays the WAL); `fast`: a clean shutdown."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        out = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return "server is running" in out

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -------------------------------------------------------------- databases
    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} "
                "connect_timeout=3")

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new database; its SQLAlchemy URL."""
        import psycopg

        name = name or f"tf_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def private_server() -> Iterator[PrivateServer]:
    """Set up, start, yield, stop and remove a private server (the fixture's body)."""
    require()
    bindir = find_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="trialflow-pg-"))
    root.chmod(0o777)  # the postgres OS user must enter it (and own its data directory)
    if os.geteuid() == 0:
        shutil.chown(root, user=RUN_AS)
    server = PrivateServer(root, free_port(), bindir)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        try:
            if server.data.exists() and server.running():
                server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
