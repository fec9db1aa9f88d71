"""A real authoritative DNS server (BIND 9 `named` from Debian) on a free loopback port.

It serves the zone `example.test.` and accepts RFC 2136 dynamic updates from 127.0.0.1,
which tests send with dnspython's `dns.update` to change records while syncd runs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.update

from harness.kube_apiserver import ServerStartError, _tail, free_port, stop_process

ZONE = "example.test."


def _named() -> str:
    for candidate in (shutil.which("named"), "/usr/sbin/named"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServerStartError("BIND's named is not installed (scripts/install-system-deps.sh)")


class BindServer:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        zone_file = self.workdir / "example.test.zone"
        if not zone_file.exists():
            zone_file.write_text(
                "$TTL 2\n"
                f"@ IN SOA ns.{ZONE} hostmaster.{ZONE} 1 60 60 600 2\n"
                f"@ IN NS ns.{ZONE}\n"
                "ns IN A 192.0.2.253\n"
            )
        config = self.workdir / "named.conf"
        config.write_text(f"""
options {{
    directory "{self.workdir}";
    pid-file "{self.workdir}/named.pid";
    session-keyfile "{self.workdir}/session.key";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ 127.0.0.1; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{ZONE}" {{
    type primary;
    file "{zone_file}";
    check-names ignore;  // host names syncd must refuse as endpoint names (rgw_72)
    allow-update {{ 127.0.0.1; }};
}};
""")
        return config

    def start(self, timeout: float = 30, zone_loaded: bool = True) -> None:
        """Start named; ready when it answers the zone's SOA (with `zone_loaded` False:
        when it answers at all, e.g. SERVFAIL for a zone that did not load)."""
        config = self._write_config()
        log = self.workdir / "named.log"
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [_named(), "-g", "-4", "-c", str(config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"named exited with {self.process.returncode}:\n{_tail(log)}"
                )
            try:
                query = dns.message.make_query(ZONE, "SOA")
                response = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
                if response.answer or not zone_loaded:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.1)
        raise ServerStartError(f"named not answering after {timeout}s:\n{_tail(log)}")

    def restart_with_zone(self, records: str, valid: bool = True) -> None:
        """Stop named, write the zone file anew (the SOA, then `records`; with `valid`
        False, a line named refuses, so the zone does not load and every query in it is
        answered SERVFAIL), and start it again. Dynamic updates made before are dropped."""
        self.stop()
        zone_file = self.workdir / "example.test.zone"
        for journal in self.workdir.glob("example.test.zone.jnl"):
            journal.unlink()
        zone_file.write_text(
            "$TTL 2\n"
            f"@ IN SOA ns.{ZONE} hostmaster.{ZONE} 2 60 60 600 2\n"
            f"@ IN NS ns.{ZONE}\n"
            "ns IN A 192.0.2.253\n" + records + ("" if valid else "broken IN A not-an-address\n")
        )
        self.start(zone_loaded=valid)

    def stop(self) -> None:
        stop_process(self.process)

    def update(self, *changes: tuple) -> None:
        """RFC 2136: ("add", name, ttl, type, data) / ("delete", name[, type[, data]])."""
        message = dns.update.UpdateMessage(ZONE)
        for change in changes:
            verb, name, *rest = change
            if verb == "add":
                message.add(name, *rest)
            elif verb == "replace":
                message.replace(name, *rest)
            else:
                message.delete(name, *rest)
        response = dns.query.tcp(message, "127.0.0.1", port=self.port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            raise AssertionError(f"DNS update refused: {dns.rcode.to_text(response.rcode())}")
