"""Hosts as network namespaces on one machine (root): a bridge with an address of its own for
the driver, and one namespace per host joined to it by a veth pair.  Taking a host's veth down
is a real partition: no RST, no FIN, packets just stop.

Only addresses of the namespaces and the bridge made here are used; :meth:`Hosts.close` deletes
them all (and runs on any failure while making them).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import attrs


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def why_not() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "tier 2: network namespaces need root"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "tier 2: 'ip' (iproute2) or 'nsenter' is missing"
    probe = f"lmprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"tier 2: 'ip netns add' fails here: {err.decode().strip() or exc}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@attrs.define
class Hosts:
    """``count`` namespaces ``names[i]`` with address ``addrs[i]``; the driver at ``bridge_addr``."""

    count: int
    tag: str = attrs.field(factory=lambda: f"{os.getpid() % 100000}")
    names: list[str] = attrs.field(factory=list)
    addrs: list[str] = attrs.field(factory=list)
    veths: list[str] = attrs.field(factory=list)
    bridge: str = ""
    bridge_addr: str = ""

    def open(self) -> Hosts:
        subnet = f"10.213.{os.getpid() % 250}"
        self.bridge = f"lmbr{self.tag}"
        self.bridge_addr = f"{subnet}.1"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.bridge_addr}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(self.count):
                name, veth, addr = f"lm{self.tag}h{i}", f"lmv{self.tag}h{i}", f"{subnet}.{10 + i}"
                _ip("netns", "add", name)
                self.names.append(name)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
                self.veths.append(veth)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", name, "link", "set", "eth0", "up")
                _ip("-n", name, "link", "set", "lo", "up")
                self.addrs.append(addr)
        except BaseException:
            self.close()
            raise
        return self

    def run_in(self, i: int) -> list[str]:
        """The argv prefix that runs a command in host ``i``'s namespace (``nsenter``, not
        ``ip netns exec``, which remounts /sys)."""
        return ["nsenter", f"--net=/run/netns/{self.names[i]}", "--"]

    def partition(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "up")

    def close(self) -> None:
        # Deleting the host end takes its peer with it at once; a namespace's own cleanup
        # runs later in the kernel (a veth was seen to outlive 'ip netns del').
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.names.clear()
        self.veths.clear()
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
            self.bridge = ""
