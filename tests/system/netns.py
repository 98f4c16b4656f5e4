"""Hosts on one machine: network namespaces on a bridge, for the rehearsal across hosts
(tests/system/test_fleet_netns.py).

`open_hosts(*names)` makes a Linux bridge in the root namespace (the test's own host: the
simulator and the subscriber listen or connect there, on the bridge's address) and, for each
name, a network namespace joined to the bridge by a veth pair, with an address of a private
/24 that no interface or route of this machine uses. A process runs on a host through
`Host.launcher` (`ip netns exec NS`, which execs: the pid is the process's own).
`Host.partition(ip, port)` drops every TCP segment between the host and `ip:port`, both ways,
with iptables in the host's namespace: connections stay open at both ends and their
retransmissions are dropped, as behind a cut cable; `Host.heal` removes the rules and says how
many packets they dropped.

Clean-up runs whatever the block raised: every process still in a namespace is killed by its
pid (`ip netns pids`), each namespace deleted (its iptables rules and veth end go with it, the
peer end with the pair), the bridge deleted, and the rule added to the root namespace's
FORWARD chain, if any, removed. That rule is added only where bridged frames pass through
iptables (br_netfilter): a FORWARD policy of DROP, as Docker sets, would cut the hosts apart.
Whatever could not be removed is named in one error.

Needs root, `ip` (iproute2) and `iptables`; `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio

BRIDGE_FILTERED = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
CANDIDATES = ipaddress.IPv4Network("10.231.0.0/16")  # the /24s a rehearsal picks from


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, iptables)"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (Debian packages iproute2, iptables)"
    probe = f"screener-probe-{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot make a network namespace here: {exc}"
    run("ip", "netns", "delete", probe)
    return None


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of CANDIDATES that overlaps no address or route of this machine more specific
    than /16 (a wide route such as 10.0.0.0/8 yields to the bridge's /24)."""
    taken = [
        ipaddress.IPv4Interface(line.split()[3]).network
        for line in run("ip", "-4", "-o", "addr", "show").splitlines()
    ]
    for line in run("ip", "-4", "route", "show", "table", "all").splitlines():
        dest = line.split()[0]
        if dest[0].isdigit():
            taken.append(ipaddress.IPv4Network(dest, strict=False))
    free = [
        net
        for net in CANDIDATES.subnets(new_prefix=24)
        if not any(net.overlaps(t) and t.prefixlen >= 16 for t in taken)
    ]
    if not free:
        raise RuntimeError(f"no free /24 in {CANDIDATES}")
    return random.choice(free)


def iptables_in(namespace: str, *args: str) -> str:
    return run("ip", "netns", "exec", namespace, "iptables", *args)


@dataclass(frozen=True)
class Host:
    """One namespace: its name and its address on the bridge."""

    namespace: str
    ip: str

    @property
    def launcher(self) -> list[str]:
        """The command prefix that runs a process on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def _rules(self, ip: str, port: int) -> list[list[str]]:
        tcp = ["-p", "tcp"]
        return [
            ["OUTPUT", *tcp, "-d", ip, "--dport", str(port), "-j", "DROP"],
            ["INPUT", *tcp, "-s", ip, "--sport", str(port), "-j", "DROP"],
        ]

    async def partition(self, ip: str, port: int) -> None:
        """Drop every segment to and from `ip:port` on this host, from now on."""
        for rule in self._rules(ip, port):
            await trio.run_process([*self.launcher, "iptables", "-A", *rule])

    async def heal(self, ip: str, port: int) -> int:
        """Remove the partition; returns the packets it dropped (both ways)."""
        dropped = 0
        for chain in ("OUTPUT", "INPUT"):
            listing = await trio.run_process(
                [*self.launcher, "iptables", "-nvxL", chain], capture_stdout=True
            )
            for line in listing.stdout.decode().splitlines()[2:]:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "DROP":
                    dropped += int(fields[0])
        for rule in self._rules(ip, port):
            await trio.run_process([*self.launcher, "iptables", "-D", *rule])
        return dropped


@dataclass(frozen=True)
class Net:
    """The bridge's address (the root namespace: the test's host) and the hosts by name."""

    gateway: str
    bridge: str
    hosts: dict[str, Host]
    names: tuple[str, ...]  # every namespace and link it made, for the leftovers check


@contextmanager
def open_hosts(*names: str) -> Iterator[Net]:
    """A namespace per name on one bridge, for the block; everything removed afterwards."""
    tag = f"{random.randrange(16**5):05x}"
    subnet = free_subnet()
    addresses = list(subnet.hosts())
    bridge = f"snb{tag}"
    namespaces: list[str] = []
    links = [bridge]
    forward: list[str] = []
    try:
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "addr", "add", f"{addresses[0]}/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        if BRIDGE_FILTERED.exists() and BRIDGE_FILTERED.read_text().strip() == "1":
            forward = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
            run("iptables", "-I", *forward)
        hosts: dict[str, Host] = {}
        for i, name in enumerate(names):
            ns, outside, inside = f"screener-{tag}-{name}", f"snh{tag}{i}", f"snp{tag}{i}"
            run("ip", "netns", "add", ns)
            namespaces.append(ns)
            run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            links.append(outside)
            run("ip", "link", "set", outside, "master", bridge)
            run("ip", "link", "set", outside, "up")
            run("ip", "link", "set", inside, "netns", ns)
            address = addresses[10 + i]
            run("ip", "-n", ns, "link", "set", inside, "name", "eth0")
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            hosts[name] = Host(ns, str(address))
        yield Net(str(addresses[0]), bridge, hosts, (*namespaces, *links))
    finally:
        tear_down(namespaces, links, forward)


def tear_down(namespaces: list[str], links: list[str], forward: list[str]) -> None:
    """Kill what still runs in each namespace, delete the links (a veth pair goes at once with
    one end; a namespace's own ends would go later, in the kernel's own time), the namespaces
    and the FORWARD rule; every step is tried, and what failed is raised at the end."""
    failed: list[str] = []

    def attempt(*args: str) -> None:
        try:
            run(*args)
        except RuntimeError as exc:
            failed.append(str(exc))

    for ns in namespaces:
        try:
            pids = run("ip", "netns", "pids", ns).split()
        except RuntimeError as exc:
            failed.append(str(exc))
            continue
        for pid in pids:
            with suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(int(pid), signal.SIGKILL)
    for link in reversed(links):  # the veth pairs, then the bridge
        attempt("ip", "link", "delete", link)
    for ns in namespaces:
        attempt("ip", "netns", "delete", ns)
    if forward:
        attempt("iptables", "-D", *forward)
    if failed:
        raise RuntimeError("left behind: " + "; ".join(failed))


def leftovers(net: Net) -> list[str]:
    """The namespaces, links and root rules of `net` that still exist (after the block:
    none). The bridge's name is in each of them."""
    present = run("ip", "netns", "list") + run("ip", "-o", "link", "show")
    left = [name for name in net.names if name in present]
    left += [rule for rule in run("iptables", "-S").splitlines() if net.bridge in rule]
    return left
