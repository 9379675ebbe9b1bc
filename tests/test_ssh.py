"""The SSH layer and the ``host`` platform over SSH, against a real OpenSSH server on loopback.

Host keys must be verified (unknown and changed keys refused with the fix), argv must reach the
remote command intact, failures must be one-line project errors, and SFTP listing, reading and the
database tunnel must give exactly what the local machinery gives.
"""

from __future__ import annotations

import io
import os
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

from odoops.errors import AuthenticationFailed, ConfigError, ConnectionFailed, RefusedError, ToolFailed
from odoops.inventory import load_inventory
from odoops.platforms import platform_for
from odoops.platforms.host import HostPlatform
from odoops.platforms.ssh_host import SSHHostPlatform
from odoops.sandbox import free_port
from tasks.postgres import ConnInfo, connect
from tasks.ssh import HostKeyRejected, SSHSession


def _session(sshd, **overrides) -> SSHSession:
    params = dict(host=sshd.host, port=sshd.port, user=sshd.user, key_file=sshd.key_file,
                  known_hosts=sshd.known_hosts, timeout=30)
    params.update(overrides)
    return SSHSession(**params)


@pytest.fixture(scope="module")
def session(sshd):
    with _session(sshd) as s:
        yield s


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def filestore(sshd) -> Path:
    """A filestore-shaped tree the server's user can read, with a symlink and an empty folder to skip."""
    root = sshd.mkdir("filestore") / "acme"
    files = {
        "ab/abcdef0123456789abcdef0123456789abcdef01": b"first file\n",
        "ab/ab00000000000000000000000000000000000000": b"",
        "cd/cd11111111111111111111111111111111111111": os.urandom(300_000),
        "checklist/ab/abcdef0123456789abcdef0123456789abcdef01": b"",
        "name with space/it's 'quoted'": b"odd names survive\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "ef").mkdir()
    (root / "link").symlink_to(root / "ab" / "abcdef0123456789abcdef0123456789abcdef01")
    for folder, _dirs, _files in os.walk(root):
        os.chmod(folder, 0o755)
    return root


# ---------------------------------------------------------------- commands


def test_run_returns_stdout_and_exit_code(session, sshd):
    assert session.run(["id", "-un"]).stdout.decode().strip() == sshd.user
    result = session.run(["echo", "hello"])
    assert result == (0, b"hello\n", b"")
    assert session.run(["sh", "-c", "exit 3"], check=False).exit_code == 3


def test_nonzero_exit_raises_tool_failed_with_remote_error_line(session):
    with pytest.raises(ToolFailed) as caught:
        session.run(["sh", "-c", "echo progress >&2; echo 'pg_dump: error: connection to server failed' >&2; exit 3"])
    message = _one_line(caught.value)
    assert "sh on 127.0.0.1 exited 3" in message
    assert message.endswith("pg_dump: error: connection to server failed")


def test_missing_remote_command_is_named(session):
    with pytest.raises(ToolFailed, match="no-such-odoo-bin: command not found on 127.0.0.1"):
        session.run(["no-such-odoo-bin", "--version"])


@pytest.mark.parametrize("arg", ["a b'c", '"; touch {pwned}; echo "', "'; touch {pwned}; '", "$(touch {pwned}) `id` *",
                                 "", "-n", "line\nbreak"])
def test_argv_reaches_remote_command_intact(session, sshd, arg):
    pwned = sshd.mkdir("quoting") / "pwned"
    arg = arg.replace("{pwned}", str(pwned))
    assert session.run(["printf", "%s", arg]).stdout == arg.encode()
    assert not pwned.exists()


def test_stdin_and_streamed_stdout(session):
    payload = os.urandom(3 * 1024 * 1024)
    sink = io.BytesIO()
    result = session.run(["cat"], stdin=payload, stdout=sink)
    assert result.exit_code == 0 and result.stdout == b""
    assert sink.getvalue() == payload
    # stderr and stdout are both drained while the command runs (no deadlock on big outputs)
    big = session.run(["sh", "-c", "head -c 2000000 /dev/zero; head -c 2000000 /dev/zero >&2"])
    assert len(big.stdout) == 2_000_000 and len(big.stderr) == 2_000_000


# ---------------------------------------------------------------- connection faults


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRejected) as caught:
        _session(sshd, known_hosts=empty)
    message = _one_line(caught.value)
    assert isinstance(caught.value, RefusedError)
    assert f"host key of [127.0.0.1]:{sshd.port} is not in {empty}" in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message
    assert "never accepts unknown host keys" in message
    assert empty.read_text() == ""  # nothing was added


def test_changed_host_key_is_refused(sshd, tmp_path):
    other = " ".join(Path(f"{sshd.spare_key}.pub").read_text().split()[:2])
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    with pytest.raises(HostKeyRejected) as caught:
        _session(sshd, known_hosts=known)
    message = _one_line(caught.value)
    assert f"host key of [127.0.0.1]:{sshd.port} has CHANGED" in message
    assert "ssh-ed25519 SHA256:" in message and "man-in-the-middle" in message


def test_hashed_known_hosts_is_accepted(sshd, tmp_path):
    hashed = tmp_path / "known_hosts"
    hashed.write_text(sshd.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "127.0.0.1" not in hashed.read_text()
    with _session(sshd, known_hosts=hashed) as s:
        assert s.run(["true"]).exit_code == 0


def test_missing_known_hosts_file_is_a_config_error(sshd, tmp_path):
    with pytest.raises(ConfigError, match="known_hosts file .* not found: create it with ssh-keyscan"):
        _session(sshd, known_hosts=tmp_path / "nope")


def test_unreachable_port_is_connection_failed(sshd):
    port = free_port()
    with pytest.raises(ConnectionFailed) as caught:
        _session(sshd, port=port)
    message = _one_line(caught.value)
    assert f"127.0.0.1:{port}: connection refused" in message
    assert caught.value.permanent is False


def test_wrong_key_is_authentication_failed(sshd):
    with pytest.raises(AuthenticationFailed) as caught:
        _session(sshd, key_file=sshd.spare_key)
    message = _one_line(caught.value)
    assert f"authentication failed with key {sshd.spare_key}" in message


# ---------------------------------------------------------------- files


def test_sftp_walk_equals_local_walk(session, filestore):
    remote = sorted(session.walk(str(filestore)))
    local = []
    for folder, _dirs, names in os.walk(filestore):
        for name in names:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            st = path.lstat()
            local.append((path.relative_to(filestore).as_posix(), st.st_size, st.st_mtime_ns // 10**9 * 10**9))
    assert remote == sorted(local)
    assert len(remote) == 5 and all("link" != rel for rel, _, _ in remote)


def test_walk_of_missing_folder_is_config_error(session, filestore):
    with pytest.raises(ConfigError, match="does not exist"):
        list(session.walk(str(filestore / "missing")))


def test_open_reads_exact_bytes(session, filestore):
    for rel in ("cd/cd11111111111111111111111111111111111111", "ab/ab00000000000000000000000000000000000000",
                "name with space/it's 'quoted'"):
        with session.open(str(filestore / rel)) as handle:
            assert handle.read() == (filestore / rel).read_bytes()
    with pytest.raises(ConfigError, match="does not exist"):
        session.open(str(filestore / "nope"))


# ---------------------------------------------------------------- tunnel


def test_forward_reaches_loopback_postgres(session, pg_cluster):
    with session.forward("127.0.0.1", pg_cluster.port) as local_port:
        assert local_port != pg_cluster.port
        conninfo = ConnInfo.from_dsn(f"postgresql://postgres@127.0.0.1:{local_port}/postgres")
        with connect(conninfo) as first, connect(conninfo) as second:  # two connections at once
            assert first.execute("SELECT 1").fetchone() == (1,)
            big = second.execute("SELECT repeat('x', 1000000)").fetchone()[0]
            assert len(big) == 1_000_000
    assert not [t for t in threading.enumerate() if t.name.startswith(f"ssh-forward-{local_port}")]
    with pytest.raises(ConnectionFailed):  # the local port is closed after the context
        with connect(conninfo) as conn:
            conn.execute("SELECT 1")


def test_tunnel_connections_opening_and_closing_never_drop_the_session(session, pg_cluster):
    """Closing a channel while its other direction still sends made OpenSSH drop the whole connection."""
    for _ in range(60):
        with session.forward("127.0.0.1", pg_cluster.port) as local_port:
            conninfo = ConnInfo.from_dsn(f"postgresql://postgres@127.0.0.1:{local_port}/postgres")
            with connect(conninfo) as first, connect(conninfo) as second:
                first.execute("SELECT 1")
                second.execute("SELECT repeat('x', 200000)").fetchone()
    assert session.run(["echo", "alive"]).stdout == b"alive\n"


def test_forward_to_closed_port_fails_at_once(session):
    port = free_port()
    with pytest.raises(ConnectionFailed, match=f"cannot reach 127.0.0.1:{port}"):
        with session.forward("127.0.0.1", port):
            pass


# ---------------------------------------------------------------- platform


def _environment(tmp_path, sshd, pg_cluster, filestore, odoo_config: Path | None = None):
    config_line = f"    odoo_config: {odoo_config}\n" if odoo_config else ""
    inventory = tmp_path / "environments.yaml"
    inventory.write_text(textwrap.dedent(f"""\
        environments:
          remote:
            stage: staging
            platform: host
            filestore: {filestore}
            database:
              dsn: postgresql://postgres@127.0.0.1:{pg_cluster.port}/postgres
            ssh:
              host: 127.0.0.1
              port: {sshd.port}
              user: {sshd.user}
              key_file: {sshd.key_file}
              known_hosts: {sshd.known_hosts}
        """) + config_line)
    return load_inventory(inventory).environment("remote")


def test_ssh_host_platform_end_to_end(tmp_path, sshd, pg_cluster, filestore):
    config = filestore.parent / "odoo.conf"
    config.write_text("[options]\nworkers = 4\n")
    config.chmod(0o644)
    env = _environment(tmp_path, sshd, pg_cluster, filestore, odoo_config=config)
    with platform_for(env) as platform:
        assert isinstance(platform, SSHHostPlatform)
        assert platform.filestore_exists()
        local = HostPlatform(env)
        expected = {(e.relpath, e.size) for e in local.list_filestore()}
        listed = list(platform.list_filestore())
        assert {(e.relpath, e.size) for e in listed} == expected
        for entry in listed:
            with platform.open_filestore_file(entry.relpath) as handle:
                assert handle.read() == (filestore / entry.relpath).read_bytes()
        with pytest.raises(RefusedError):
            platform.open_filestore_file("../odoo.conf")
        assert platform.read_odoo_config() == "[options]\nworkers = 4\n"
        done = platform.run(["sh", "-c", "echo out; echo err >&2"])
        assert (done.returncode, done.stdout, done.stderr) == (0, b"out\n", b"err\n")
        with platform.database() as conninfo:
            assert conninfo.params["host"] == "127.0.0.1" and conninfo.params["port"] != str(pg_cluster.port)
            assert conninfo.dbname == "postgres" and conninfo.params["user"] == "postgres"
            with connect(conninfo) as conn:
                assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)


def test_ssh_host_platform_missing_filestore_and_config(tmp_path, sshd, pg_cluster, filestore):
    env = _environment(tmp_path, sshd, pg_cluster, filestore / "gone", odoo_config=filestore / "no.conf")
    with platform_for(env) as platform:
        assert not platform.filestore_exists()
        with pytest.raises(ConfigError) as caught:
            list(platform.list_filestore())
        assert f"filestore folder {filestore / 'gone'} does not exist on 127.0.0.1" in _one_line(caught.value)
        with pytest.raises(ConfigError, match="odoo_config .* not found on 127.0.0.1"):
            platform.read_odoo_config()
