"""An sshd on a loopback port for the tier-2 tests (root): its own host key, one authorized
key, no passwords, no PAM.  :func:`start` returns it with the ``ssh`` command that reaches it
(for ``LOGMESH_SSH``); :meth:`Sshd.close` stops it by its pid."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import attrs

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def why_not() -> str | None:
    """Why an sshd cannot be run here (None: it can)."""
    if os.geteuid() != 0:
        return "tier 2: an sshd on this machine needs root"
    if not os.path.exists(SSHD) or shutil.which("ssh") is None or \
            shutil.which("ssh-keygen") is None:
        return ("tier 2: openssh-server/openssh-client are not installed (as root: "
                "apt-get install openssh-server openssh-client)")
    return None


@attrs.define
class Sshd:
    process: subprocess.Popen
    ssh: str

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(where: Path) -> Sshd:
    """Start sshd in the foreground (``-D``) on 127.0.0.1; wait until it accepts."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("user", "host"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(where / name)], check=True, timeout=30)
    shutil.copy(where / "user.pub", where / "authorized_keys")
    os.makedirs("/run/sshd", exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", "/dev/null", "-o", f"ListenAddress=127.0.0.1:{port}",
         "-o", f"HostKey={where / 'host'}", "-o", f"AuthorizedKeysFile={where / 'authorized_keys'}",
         "-o", "PasswordAuthentication=no", "-o", "UsePAM=no", "-o", "StrictModes=no",
         "-o", "PermitRootLogin=prohibit-password", "-o", f"PidFile={where / 'sshd.pid'}"],
        stdout=subprocess.DEVNULL, stderr=open(where / "sshd.log", "wb"))
    ssh = shlex.join(["ssh", "-p", str(port), "-i", str(where / "user"), "-o",
                      "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                      "-o", "LogLevel=ERROR"])
    server = Sshd(process, ssh)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.close()
    raise RuntimeError(f"sshd did not listen: {(where / 'sshd.log').read_text()[-500:]}")
