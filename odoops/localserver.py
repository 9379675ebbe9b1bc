"""The Prefect server a CLI call runs its flows on: the one named by PREFECT_API_URL, else one local server
kept running between calls.

Why: without PREFECT_API_URL, Prefect starts a temporary ("ephemeral") server for every process and stops
it at exit: 5–12 s of every ``odoops backup``, even one with nothing to do. Instead the first flow-running
command starts one server for the Prefect home (``PREFECT_HOME``, default ``~/.prefect``), detached from the
terminal, on 127.0.0.1 and a free port, and records it in ``PREFECT_HOME/odoops-server.json``; later calls
find it there and only check that it answers. ``odoops server stop`` stops it; a killed server is noticed
(its pid and start time, then its health) and replaced by the next call; a stale record never blocks.
Two calls starting at once start one server: the start happens under an exclusive ``flock``.

The server keeps its concurrency leases on disk (as ``make serve`` does), so the slot of a run killed with
its CLI is still found and freed (odoops/slots.py), and its environment holds only Prefect's own settings:
a long-lived process must not keep the first caller's database passwords or cloud keys.

``ODOOPS_LOCAL_SERVER=0`` (or ``off``) keeps Prefect's temporary server per call.

This module is imported by every flow-running CLI call before Prefect: it imports only the standard
library and the base layer at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from odoops import holders
from odoops.errors import ConfigError, ConnectionFailed, ToolFailed

STATE_FILE = "odoops-server.json"
LOCK_FILE = "odoops-server.lock"
LOG_FILE = "odoops-server.log"
START_TIMEOUT = float(os.environ.get("ODOOPS_LOCAL_SERVER_START_TIMEOUT", 120))  # a first start migrates SQLite
CONFIGURED_TIMEOUT = 3.0  # how long the server named by PREFECT_API_URL may take to answer /health
UNRESPONSIVE_GRACE = 20.0  # a live local server that does not answer this long is replaced
LOG_ROTATE_BYTES = 5 * 1024 * 1024
# What the server process keeps of the caller's environment (plus PREFECT_* but the client's own URL and key).
_KEEP_ENV = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH",
             "PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE", "SSL_CERT_DIR"}
_CLIENT_ONLY = {"PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"}

Starting = Callable[[], contextlib.AbstractContextManager[Any]]


def disabled() -> bool:
    """``ODOOPS_LOCAL_SERVER=0``/``off``: Prefect's temporary server per call, as before."""
    return os.environ.get("ODOOPS_LOCAL_SERVER", "").strip().lower() in {"0", "off", "false", "no"}


def prefect_home() -> Path:
    """Where Prefect keeps its database (and this module its record): PREFECT_HOME, else ~/.prefect."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


# ------------------------------------------------------------------ the record of the local server


@dataclass
class LocalServer:
    """One local server as recorded in PREFECT_HOME/odoops-server.json."""

    home: str
    port: int
    pid: int
    pid_start: str | None
    host: str
    boot_id: str
    started_at: float
    ready: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log(self) -> Path:
        return Path(self.home) / LOG_FILE

    def alive(self) -> bool:
        """Its process still runs (same host, same boot, same pid start time, not a zombie)."""
        if self.host != socket.gethostname() or (self.boot_id and self.boot_id != holders.boot_id()):
            return False
        if holders.process_start(self.pid) != self.pid_start:
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.api_url, "ui_url": self.url, "pid": self.pid, "port": self.port, "home": self.home,
                "started_at": self.started_at, "uptime_seconds": round(time.time() - self.started_at, 1),
                "log": str(self.log)}


def read_state(home: Path) -> LocalServer | None:
    """The recorded server, or None when there is no record or it is unreadable (a stale file never blocks)."""
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return LocalServer(**{k: data[k] for k in LocalServer.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, server: LocalServer) -> None:
    tmp = home / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(server), indent=1))
    tmp.replace(home / STATE_FILE)


def _forget(home: Path, server: LocalServer | None) -> None:
    """Remove the record, if it is still the one about ``server``."""
    current = read_state(home)
    if current is not None and (server is None or (current.pid, current.port) == (server.pid, server.port)):
        (home / STATE_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One starter (or stopper) per Prefect home at a time; the kernel frees the lock if its holder dies."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ------------------------------------------------------------------ health


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the local server: never via a proxy


def health_problem(api_url: str, timeout: float, direct: bool = False) -> str | None:
    """None when ``<api_url>/health`` answers; else why not, in a few words (never the URL's credentials).

    Any HTTP answer below 500 counts: a server behind authentication answers 401 and is reachable.
    ``direct``: ignore http_proxy (the local server is on loopback); a configured URL goes the way
    Prefect's own client would, proxies included.
    """
    opener = _DIRECT if direct else urllib.request.build_opener()
    try:
        with opener.open(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read()
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"it answers HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return "no answer within the time limit" if isinstance(reason, TimeoutError) else str(reason)
    except ValueError:
        return "not an http(s) URL"


def _wait_healthy(server: LocalServer, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if health_problem(server.api_url, 2, direct=True) is None:
            return True
        if (proc is not None and proc.poll() is not None) or not server.alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def shown_url(url: str) -> str:
    """The URL without user and password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


# ------------------------------------------------------------------ start, find, stop


def server_environment(home: Path, port: int) -> dict[str, str]:
    """The server's environment: Prefect's settings and the basics, nothing of the caller's secrets."""
    env = {k: v for k, v in os.environ.items()
           if k in _KEEP_ENV or k.startswith("LC_") or (k.startswith("PREFECT_") and k not in _CLIENT_ONLY)}
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_LOGGING_LEVEL": env.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
        # Leases on disk: a restarted server still knows, and revokes, the slot of a run that died meanwhile.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": env.get(
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"),
    })
    return env


def _rotate_log(home: Path) -> None:
    log = home / LOG_FILE
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            log.replace(home / f"{LOG_FILE}.1")


def _spawn(home: Path) -> LocalServer:
    """Start ``python -m odoops.localserver serve --home HOME --port N`` detached; wait until it answers."""
    _rotate_log(home)
    last_problem = ""
    for _attempt in range(3):  # the free port may be taken between choosing it and binding it
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(home / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "odoops.localserver", "serve", "--home", str(home), "--port", str(port)],
                cwd=home, env=server_environment(home, port), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        server = LocalServer(home=str(home), port=port, pid=proc.pid, pid_start=holders.process_start(proc.pid),
                             host=socket.gethostname(), boot_id=holders.boot_id(), started_at=time.time())
        _write_state(home, server)  # recorded at once: a caller killed while waiting leaves no unknown server
        if _wait_healthy(server, START_TIMEOUT, proc):
            server.ready = True
            _write_state(home, server)
            return server
        if proc.poll() is None:  # alive but silent past the time limit
            _terminate(server)
            last_problem = f"it did not answer within {START_TIMEOUT:.0f} s"
        else:
            last_problem = f"it exited with code {proc.returncode}"
        _forget(home, server)
    raise ToolFailed(f"the local Prefect server did not start ({last_problem}): see {home / LOG_FILE}, "
                     "or set ODOOPS_LOCAL_SERVER=0 to use a temporary server per call")


def _terminate(server: LocalServer, timeout: float = 15) -> None:
    """SIGTERM (Prefect's server shuts down cleanly), SIGKILL after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if not server.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # our own child (the CLI run in-process): reap it
                os.waitpid(server.pid, os.WNOHANG)
            if not server.alive():
                return
            time.sleep(0.05)


def running(home: Path | None = None, timeout: float = 2) -> LocalServer | None:
    """The recorded local server if its process lives and it answers, else None."""
    server = read_state(home or prefect_home())
    if server is None or not server.alive():
        return None
    return server if health_problem(server.api_url, timeout, direct=True) is None else None


def start_local(home: Path | None = None, starting: Starting | None = None) -> LocalServer:
    """The local server of ``home``, started if it is not running (under the lock: one starter at a time)."""
    home = home or prefect_home()
    try:
        return _start_local(home, starting)
    except OSError as exc:
        raise ConfigError(f"the local Prefect server cannot use PREFECT_HOME {home} ({exc.strerror or exc}): "
                          "make it writable or point PREFECT_HOME elsewhere") from None


def _start_local(home: Path, starting: Starting | None) -> LocalServer:
    server = read_state(home)
    if server is not None and server.ready and server.alive() and health_problem(server.api_url, 2, True) is None:
        return server
    with _locked(home):
        server = read_state(home)  # another call may have started it while this one waited for the lock
        if server is not None and server.alive():
            if _wait_healthy(server, START_TIMEOUT if not server.ready else UNRESPONSIVE_GRACE):
                if not server.ready:  # its starter was killed while waiting for it
                    server.ready = True
                    _write_state(home, server)
                return server
            _terminate(server)  # alive but not answering: replaced, never waited on forever
        _forget(home, server)
        with starting() if starting is not None else contextlib.nullcontext():
            return _spawn(home)


def stop_local(home: Path | None = None) -> LocalServer | None:
    """Stop the local server of ``home``; the one stopped, or None when none was running."""
    home = home or prefect_home()
    if read_state(home) is None:  # nothing recorded (and no home folder made just to say so)
        return None
    with _locked(home):
        server = read_state(home)
        if server is None:
            return None
        was_alive = server.alive()
        _terminate(server)
        _forget(home, server)
        return server if was_alive else None


def local_servers() -> dict[int, Path]:
    """Every live local server on this machine, by its command line: pid -> Prefect home (for clean-ups)."""
    found: dict[int, Path] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if "odoops.localserver" in argv and "serve" in argv and "--home" in argv[:-1]:
            found[int(proc.name)] = Path(argv[argv.index("--home") + 1])
    return found


def configured_api_url() -> str | None:
    """PREFECT_API_URL as Prefect resolves it: the environment, else its settings (profile, prefect.toml…)."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return url
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def use(server: LocalServer) -> None:
    """Point this process (and what it starts) at ``server``.

    Its flow runs send no flow-run heartbeat: nothing on the local server watches them (they feed a crash
    detection automation one sets up on a shared server, which keeps them), and with them every run's end
    waits up to 1 s for Prefect's heartbeat thread to notice it.
    """
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["PREFECT_UI_URL"] = server.url
    import prefect.context

    prefect.context.refresh_global_settings_context()  # settings were loaded before: again, with the new URL
    prefect.context.GLOBAL_SETTINGS_CONTEXT.settings.flows.heartbeat_frequency = None


def ensure_server(starting: Starting | None = None) -> str | None:
    """Before a flow-running command: the API URL its runs go to (None: Prefect's temporary server).

    PREFECT_API_URL configured: that server must answer within 3 s, else one-line ConnectionFailed.
    Otherwise the local server of PREFECT_HOME, started on first use (``starting`` shows that it is).
    """
    if disabled():
        return None
    configured = configured_api_url()
    if configured:
        problem = health_problem(configured, CONFIGURED_TIMEOUT)
        if problem == "not an http(s) URL":
            raise ConfigError(f"PREFECT_API_URL {shown_url(configured)!r} is not an http(s) URL: fix it "
                              "(e.g. http://127.0.0.1:4200/api) or unset it to use the local server")
        if problem is not None:
            raise ConnectionFailed(f"the Prefect server at {shown_url(configured)} does not answer ({problem}): "
                                   "start it (make serve) or unset PREFECT_API_URL to use the local one")
        return configured
    server = start_local(starting=starting)
    use(server)
    return server.api_url


# ------------------------------------------------------------------ the server process itself


def serve(home: Path, port: int) -> None:
    """Run Prefect's server (API, UI and services) in this process until SIGTERM.

    The command line names the home, so a clean-up by path (``pkill -f <tmpdir>``) finds it.
    """
    os.environ.update(server_environment(home, port))
    for name in _CLIENT_ONLY:
        os.environ.pop(name, None)
    import uvicorn
    from prefect.server.api.server import create_app

    uvicorn.run(create_app(final=True), host="127.0.0.1", port=port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m odoops.localserver")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the local Prefect server in the foreground")
    run.add_argument("--home", type=Path, required=True)
    run.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.home.resolve(), args.port)


if __name__ == "__main__":
    main()
