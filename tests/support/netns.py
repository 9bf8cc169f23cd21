"""Hosts of a test's own: network namespaces on one switch, built with iproute2 and all removed at the end.

``network("a", "b", "c")`` makes one namespace per host and a switch (a bridge inside a namespace of its own,
so the machine's firewall never sees the traffic between hosts), and joins each host to it by a veth pair
whose host end is ``eth0`` at ``10.77.<n>.<k>/24``. The test's own namespace is on the switch too (``.1``),
so the test reaches every host. Every name carries a fresh suffix, so tests never share a namespace or an
interface. ``cut_off(host)`` sets the host's ``eth0`` down, as a pulled cable looks from that host.

``HostFleet`` is a ``Fleet`` whose children run on one host (``ip netns exec <ns> cogo process <name>``).
Where namespaces cannot be made (no iproute2, not root, no veth or bridge support) a test skips locally and
fails under ``CI=true``, as ``tests.support.services.require`` does.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bus.settings import Settings
from ecosystem.launcher import Fleet
from ecosystem.processes import Process
from tests.support.services import in_ci

LINK = "eth0"
"""A host's interface to the switch (inside its namespace, so the name is its own)."""


class NetworkUnavailable(Exception):
    """This machine cannot make network namespaces, veth pairs or bridges (or we are not root)."""


def ip(*args: str, netns: str | None = None) -> str:
    """Run ``ip [-n netns] args…``; its output.

    Raises:
        NetworkUnavailable: ``ip`` failed (its message included).
    """
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetworkUnavailable(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One host: a network namespace whose ``eth0`` is on the switch at ``address``."""

    name: str
    netns: str
    address: str

    @property
    def prefix(self) -> list[str]:
        """The command that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns]


class Network:
    """A switch and one namespace per host; ``build`` makes them, ``destroy`` removes every one of them."""

    def __init__(self, names: Sequence[str]):
        self.suffix = uuid.uuid4().hex[:8]
        self.subnet = _free_subnet()
        self.switch = f"cogo-sw-{self.suffix}"
        self.uplink = f"cg{self.suffix}t"  # the test's own end, in the test's namespace: unique there
        self.hosts = {name: Host(name, f"cogo-{name}-{self.suffix}", f"{self.subnet}.{k}")
                      for k, name in enumerate(names, start=2)}
        self._made: list[str] = []  # namespaces that exist, to remove

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def build(self) -> Network:
        """Make the switch, the hosts and their links; the test's namespace joins at ``.1``.

        Raises:
            NetworkUnavailable: a step failed (what was made is left for ``destroy``).
        """
        self._netns(self.switch)
        ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        ip("link", "set", "br0", "up", netns=self.switch)
        ip("link", "add", self.uplink, "type", "veth", "peer", "name", "port-t", "netns", self.switch)
        self._plug("port-t")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.uplink)
        ip("link", "set", self.uplink, "up")
        for host in self.hosts.values():
            self._netns(host.netns)
            port = f"port-{host.name}"
            ip("link", "add", LINK, "netns", host.netns, "type", "veth", "peer", "name", port, "netns", self.switch)
            self._plug(port)
            ip("addr", "add", f"{host.address}/24", "dev", LINK, netns=host.netns)
            ip("link", "set", LINK, "up", netns=host.netns)
            ip("link", "set", "lo", "up", netns=host.netns)
        return self

    def cut(self, host: Host) -> None:
        """Take the host off the network: its ``eth0`` goes down (its sockets stay open, their packets go nowhere)."""
        ip("link", "set", LINK, "down", netns=host.netns)

    def restore(self, host: Host) -> None:
        """Put the host back on the network (the kernel restores its route to the subnet)."""
        ip("link", "set", LINK, "up", netns=host.netns)

    @contextlib.contextmanager
    def cut_off(self, host: Host) -> Iterator[None]:
        """The host is off the network while the block runs, and back after it, even when the block fails."""
        self.cut(host)
        try:
            yield
        finally:
            self.restore(host)

    def destroy(self) -> list[str]:
        """Remove every namespace and interface made here; what could not be removed, in words."""
        problems = []
        for netns in reversed(self._made):
            # Only what this test started can live in a namespace named for it; kill what is left there by pid,
            # or the namespace would outlive its name.
            for pid in _pids(netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(NetworkUnavailable):
            ip("link", "del", self.uplink)  # at once: a deleted switch namespace would remove it only later
        for netns in reversed(self._made):
            try:
                ip("netns", "del", netns)
            except NetworkUnavailable as exc:
                problems.append(str(exc))
        self._made.clear()
        return problems

    def leftovers(self) -> list[str]:
        """Namespaces and interfaces of this network that still exist."""
        names = set(ip("netns", "list").split())
        left = [n for n in [self.switch, *(h.netns for h in self.hosts.values())] if n in names]
        return left + ([self.uplink] if self.uplink in ip("-o", "link", "show") else [])

    def _netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)

    def _plug(self, port: str) -> None:
        ip("link", "set", port, "master", "br0", netns=self.switch)
        ip("link", "set", port, "up", netns=self.switch)


def _free_subnet() -> str:
    """``10.77.<n>`` for an ``n`` that nothing in the test's namespace routes or holds an address in."""
    taken = ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr", "show")
    free = [n for n in range(256) if f"10.77.{n}." not in taken]
    if not free:
        raise NetworkUnavailable("every 10.77.<n>.0/24 is in use in this namespace")
    return f"10.77.{random.choice(free)}"


def _pids(netns: str) -> list[int]:
    try:
        return [int(p) for p in ip("netns", "pids", netns).split()]
    except NetworkUnavailable:
        return []


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message + " (CI=true: network namespaces are required)")
    pytest.skip(message)


@contextlib.contextmanager
def network(*names: str) -> Iterator[Network]:
    """A network of hosts ``names`` for the block; all of it removed after, even when the block fails.

    Skips locally, and fails under ``CI=true``, when this machine cannot make it.
    """
    if shutil.which("ip") is None:
        _unavailable("iproute2 (`ip`) is not installed: the test makes network namespaces with it")
    if os.geteuid() != 0:
        _unavailable("making network namespaces needs root")
    net = Network(names)
    try:
        net.build()
    except NetworkUnavailable as exc:
        net.destroy()
        _unavailable(f"cannot make network namespaces here: {exc}")
    try:
        yield net
    except BaseException:
        net.destroy()  # the block's own failure is the one to report
        raise
    problems = net.destroy() + net.leftovers()
    assert not problems, f"the test network was not removed: {problems}"


class HostFleet(Fleet):
    """A ``Fleet`` whose children run on ``host``: ``ip netns exec <ns>`` before ``cogo process <name>``.

    Every child still gets the fleet's ``COGO_*`` settings, which name the servers by their hosts' addresses.
    """

    def __init__(self, settings: Settings, *, host: Host, processes: Sequence[Process], **kwargs):
        super().__init__(settings, processes=processes, **kwargs)
        self.host = host

    def _argv(self, process: Process) -> list[str]:
        return [*self.host.prefix, *super()._argv(process)]

    def _resolve(self, settings: Settings) -> Settings:
        # Fleet._resolve checks each HTTP port by binding it here, in the test's namespace, where the host's
        # address does not exist; in the host's own fresh namespace every port is free. The broker is given.
        return replace(settings, home=settings.home.resolve(),
                       artifacts_dir=Path(settings.artifacts_dir).resolve()).checked()
