"""A small internet inside Linux network namespaces, for tests of servers behind NAT.

Not a test module. ``Topology`` builds, with ``ip`` and ``nft``, one "public" segment (a bridge in its own
namespace, hosts on 203.0.113.0/24) and home networks: each home is a router namespace (its WAN side on the public
segment, masquerading the home's addresses and refusing connections from outside) and one host behind it
(192.0.2.0/24 for the first home, 198.51.100.0/24 for the second). Only documentation address ranges are used and
no interface leaves the namespaces, so nothing reaches the real network. Every name carries a per-run tag, and
``remove`` deletes every namespace it made (their veths and nft tables go with them), whatever failed before.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

PUBLIC_NET = "203.0.113"
HOME_NETS = ("192.0.2", "198.51.100")
_TIMEOUT = 10.0


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip`` or ``nft``), or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    probe = f"nectar-probe-{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", probe])
    except RuntimeError as error:
        return f"cannot create a network namespace: {error}"
    try:
        _run(["ip", "netns", "exec", probe, "nft", "list", "tables"])
    except RuntimeError as error:
        return f"nftables does not work in a namespace: {error}"
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=_TIMEOUT)
    return None


def _run(command: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}")


@dataclass
class Topology:
    """The namespaces of one test run; ``hosts`` maps a role ("public0", "home0"...) to (namespace, address)."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)

    def name(self, role: str) -> str:
        return f"nx{self.tag}-{role}"  # short: interface names are at most 15 characters

    def _netns(self, role: str) -> str:
        namespace = self.name(role)
        _run(["ip", "netns", "add", namespace])
        self.namespaces.append(namespace)
        self._in(namespace, "ip", "link", "set", "lo", "up")
        return namespace

    def _in(self, namespace: str, *command: str) -> None:
        _run(["ip", "netns", "exec", namespace, *command])

    def _veth(self, left: str, left_ns: str, right: str, right_ns: str) -> None:
        """A cable: ``left`` in ``left_ns`` to ``right`` in ``right_ns``, both up."""
        _run(["ip", "link", "add", left, "netns", left_ns, "type", "veth", "peer", "name", right, "netns", right_ns])
        self._in(left_ns, "ip", "link", "set", left, "up")
        self._in(right_ns, "ip", "link", "set", right, "up")

    def build(self, public_hosts: int = 2, homes: int = 2) -> Topology:
        """The public segment with ``public_hosts`` hosts and ``homes`` NAT'd homes of one host each."""
        try:
            self._build(public_hosts, homes)
        except BaseException:
            self.remove()
            raise
        return self

    def _build(self, public_hosts: int, homes: int) -> None:
        switch = self._netns("sw")
        self._in(switch, "ip", "link", "add", "br0", "type", "bridge")
        self._in(switch, "ip", "link", "set", "br0", "up")
        for index in range(public_hosts):
            address = f"{PUBLIC_NET}.{10 + index}"
            host = self._netns(f"p{index}")
            self._veth("eth0", host, f"p{index}", switch)
            self._in(switch, "ip", "link", "set", f"p{index}", "master", "br0")
            self._in(host, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            self.hosts[f"public{index}"] = (host, address)
        for index in range(homes):
            lan, wan = HOME_NETS[index], f"{PUBLIC_NET}.{100 + index}"
            router, host = self._netns(f"r{index}"), self._netns(f"h{index}")
            self._veth("wan", router, f"r{index}", switch)
            self._in(switch, "ip", "link", "set", f"r{index}", "master", "br0")
            self._in(router, "ip", "addr", "add", f"{wan}/24", "dev", "wan")
            self._veth("lan", router, "eth0", host)
            self._in(router, "ip", "addr", "add", f"{lan}.1/24", "dev", "lan")
            self._in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self._in(host, "ip", "addr", "add", f"{lan}.2/24", "dev", "eth0")
            self._in(host, "ip", "route", "add", "default", "via", f"{lan}.1")
            _run(["ip", "netns", "exec", router, "nft", "-f", "-"], stdin=_nat_rules(lan))
            self.hosts[f"home{index}"] = (host, f"{lan}.2")
            self.hosts[f"router{index}"] = (router, wan)

    def forward_port(self, home: int, port: int) -> str:
        """Forward TCP ``port`` of home ``home``'s router to its host, as a volunteer would; the public address."""
        router, wan = self.hosts[f"router{home}"]
        lan_host = self.address(f"home{home}")
        rules = f"""
table ip nectar_forward_{port} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" tcp dport {port} dnat to {lan_host}:{port}
    }}
}}
"""
        _run(["ip", "netns", "exec", router, "nft", "-f", "-"], stdin=rules)
        return wan

    def command(self, role: str, *command: str) -> list[str]:
        """``command`` run inside the namespace of ``role``."""
        return ["ip", "netns", "exec", self.hosts[role][0], *command]

    def address(self, role: str) -> str:
        return self.hosts[role][1]

    def remove(self) -> None:
        """Delete every namespace of this run; their interfaces and nft tables go with them."""
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=_TIMEOUT)
        self.namespaces.clear()

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _nat_rules(lan: str) -> str:
    """A home router: the home's connections leave masqueraded; nothing from outside starts a connection inside."""
    return f"""
table ip nectar_nat {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct status dnat accept
        iifname "lan" ip saddr {lan}.0/24 accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" ip saddr {lan}.0/24 masquerade
    }}
}}
"""
