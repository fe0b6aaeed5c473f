"""A worker on another host: a network namespace joined to this one by a veth pair on a
private /30 the test assigns, the worker inside it reaching the broker only over that
link, and a packet capture on the link that shows the prompt only when CURVE is off.

Needs root (ip netns, tcpdump). A namespace that cannot be made fails the test.
"""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.client import Client
from broker.security import peer_keys
from tests.harness import curve_keys, free_port, wait_until


@dataclass(frozen=True)
class Link:
    """A namespace (the other host) and the veth pair joining it to this one."""

    namespace: str
    host_device: str
    host_address: str
    remote_address: str

    @property
    def prefix(self) -> list[str]:
        """The command that runs a process on the other host."""
        return ["ip", "netns", "exec", self.namespace]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def unused_network() -> ipaddress.IPv4Network:
    """A private /30 that overlaps no address or route of this host."""
    taken = []
    for listing in (["-j", "route", "show", "table", "all"], ["-j", "addr"]):
        found = json.loads(subprocess.run(["ip", *listing], check=True, capture_output=True, text=True).stdout)
        for entry in found:
            if entry.get("dst", "default") not in ("default", "unreachable"):
                taken.append(entry["dst"])
            addresses = [a for a in entry.get("addr_info", []) if a.get("family") == "inet"]
            taken += [f"{a['local']}/{a['prefixlen']}" for a in addresses]
    occupied = [ipaddress.ip_network(net, strict=False) for net in taken if ":" not in net]
    for _ in range(100):
        second, third, fourth = random.randint(200, 254), random.randint(0, 255), random.randrange(0, 256, 4)
        candidate = ipaddress.ip_network(f"10.{second}.{third}.{fourth}/30")
        if not any(candidate.overlaps(net) for net in occupied):
            return candidate
    raise RuntimeError("no free private /30 found")


@pytest.fixture
def link() -> Iterator[Link]:
    """Make the namespace and the veth pair; remove them at the end, whatever happened."""
    suffix = secrets.token_hex(3)
    namespace, host_device, remote_device = f"llmapi-{suffix}", f"vh{suffix}", f"vn{suffix}"
    host_address, remote_address = (str(a) for a in unused_network().hosts())
    try:
        ip("netns", "add", namespace)
        ip("link", "add", host_device, "type", "veth", "peer", "name", remote_device)
        ip("link", "set", remote_device, "netns", namespace)
        ip("addr", "add", f"{host_address}/30", "dev", host_device)
        ip("link", "set", host_device, "up")
        ip("netns", "exec", namespace, "ip", "addr", "add", f"{remote_address}/30", "dev", remote_device)
        ip("netns", "exec", namespace, "ip", "link", "set", remote_device, "up")
        ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield Link(namespace, host_device, host_address, remote_address)
    finally:
        subprocess.run(["ip", "link", "del", host_device], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


class Capture:
    """tcpdump writing every TCP packet on ``device`` to ``path`` as it sees it."""

    def __init__(self, device: str, path: Path) -> None:
        tcpdump = shutil.which("tcpdump") or "/usr/sbin/tcpdump"
        self.path = path
        self.errors = path.with_suffix(".err")
        with open(self.errors, "wb") as errors:
            self.process = subprocess.Popen(
                [tcpdump, "-i", device, "-n", "-U", "--immediate-mode", "-w", str(path), "tcp"], stderr=errors
            )
        wait_until(lambda: b"listening on" in self.errors.read_bytes(), what="tcpdump to listen")

    def payloads(self) -> list[bytes]:
        return tcp_payloads(self.path.read_bytes()) if self.path.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(10)


def tcp_payloads(pcap: bytes) -> list[bytes]:
    """The TCP payload of each Ethernet/IPv4 packet of a pcap file."""
    payloads = []
    offset = 24  # the file header
    while offset + 16 <= len(pcap):
        (length,) = struct.unpack_from("<I", pcap, offset + 8)
        frame = pcap[offset + 16:offset + 16 + length]
        offset += 16 + length
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip_header = (frame[14] & 0x0F) * 4
        tcp_header = (frame[14 + ip_header + 12] >> 4) * 4
        payloads.append(frame[14 + ip_header + tcp_header:])
    return payloads


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "plaintext"])
def test_a_worker_on_another_host_serves_over_the_link_and_only_plaintext_shows_the_prompt(
    link, stack_factory, tmp_path, curve
):
    remote_endpoint = f"tcp://{link.host_address}:{free_port()}"
    local_endpoint = f"tcp://127.0.0.1:{free_port()}"
    # Heartbeats at the usual second, not the fast tests' 0.2 s: a loaded machine can stall a
    # starting worker for more than 0.6 s, and this test asserts that its link was never lost.
    broker = {"endpoint": local_endpoint, "bind": [local_endpoint, remote_endpoint], "heartbeat_interval": 1.0}
    if curve:
        stack = stack_factory(broker=broker, curve=curve_keys(tmp_path))
    else:
        stack = stack_factory(broker={**broker, "allow_plaintext": True})
    stack.broker()
    worker = stack.start(
        "remote-worker", "worker", "--algorithm", "echo", "--endpoint", remote_endpoint, prefix=link.prefix
    )
    with Client(stack.endpoint, timeout=10, curve=peer_keys(stack.settings.curve, "client_key")) as client:
        wait_until(lambda: client.service_info("default").get("idle") == 1, timeout=30, what="the remote worker")
        capture = Capture(link.host_device, tmp_path / "link.pcap")
        try:
            token = secrets.token_hex(8)
            prompt = f"the secret prompt {token}; " * 30
            assert client.request("default", {"text": prompt}) == {"output": prompt}
            # Both the request and its answer crossed the link: two payloads at least as long as the prompt.
            wait_until(
                lambda: sum(len(p) >= len(prompt) for p in capture.payloads()) >= 2, what="the request's packets"
            )
        finally:
            capture.stop()
    wire = b"".join(capture.payloads())
    assert (token.encode() in wire) is not curve
    assert worker.alive() and "broker_lost" not in worker.log()
