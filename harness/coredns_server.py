"""A real CoreDNS on a free loopback port, its `kubernetes` plugin fed by a test API server.

It is the cluster DNS of the tests: it reads Services and EndpointSlices from the API server
(its `kubeconfig` option, with the admin's credentials) and answers the zone
`cluster.local.` as a cluster's CoreDNS does: `<service>.<namespace>.svc`,
`<hostname>.<service>.<namespace>.svc`, SRV for named ports and PTR for endpoint addresses.
Built from CoreDNS's Go module by scripts/build-test-servers.sh with the plugins used here.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from harness.kube_apiserver import ServerStartError, _tail, free_port, server_binaries, stop_process

ZONE = "cluster.local"
TTL = 5  # CoreDNS's default for the kubernetes plugin, written out to be seen


class CoreDns:
    def __init__(self, workdir: Path, kubeconfig: Path):
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.port = free_port()
        self.ready_port = free_port()
        self.process: subprocess.Popen | None = None

    def _write_corefile(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        corefile = self.workdir / "Corefile"
        corefile.write_text(f"""
.:{self.port} {{
    bind 127.0.0.1
    errors
    ready 127.0.0.1:{self.ready_port}
    kubernetes {ZONE} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig}
        ttl {TTL}
    }}
}}
""")
        return corefile

    def start(self, timeout: float = 60) -> None:
        corefile = self._write_corefile()
        log = self.workdir / "coredns.log"
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [server_binaries()["coredns"], "-conf", str(corefile)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"coredns exited with {self.process.returncode}:\n{_tail(log)}"
                )
            try:  # ready once the kubernetes plugin has listed the cluster
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ready_port}/ready", timeout=1
                ) as response:
                    if response.status == 200:
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise ServerStartError(f"coredns not ready after {timeout}s ({last}):\n{_tail(log)}")

    def stop(self) -> None:
        stop_process(self.process)

    def ask(self, name: str, rdtype: str = "A") -> list[str] | str:
        """The answer's records as text, sorted; or the rcode's name (e.g. 'NXDOMAIN').
        Over TCP when the UDP answer is truncated, as a resolver does: six SRV records
        with their names do not fit in 512 bytes."""
        query = dns.message.make_query(name, rdtype)
        try:
            response, _tcp = dns.query.udp_with_fallback(
                query, "127.0.0.1", port=self.port, timeout=2
            )
        except dns.exception.Timeout:
            return "TIMEOUT"
        if response.rcode() != dns.rcode.NOERROR:
            return dns.rcode.to_text(response.rcode())
        wanted = dns.rdatatype.from_text(rdtype)
        return sorted(
            rdata.to_text()
            for rrset in response.answer
            if rrset.rdtype == wanted
            for rdata in rrset
        )
