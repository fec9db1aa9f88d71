"""The http_sd source against real HTTP(S) servers of the test's own (the protocol is plain
JSON over HTTP: Prometheus' HTTP service discovery): groups, labels and zones, ETag, TLS
with a CA file, bearer token and basic auth read from files (and rotated), the bounds, and
failing static on every kind of error, through `render` and `run --once` on the real API
server."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from harness.certs import make_certs
from harness.helpers import endpoint_pairs, slices_of, syncd, target_with, write_config
from harness.kube_apiserver import free_port
from syncd.errors import SourceError
from syncd.model import ServicePort, Target
from syncd.sources.http_sd import HttpSdSource, HttpSdSourceConfig

pytestmark = pytest.mark.apiserver

GROUPS = [
    {"targets": ["192.0.2.10:8080", "192.0.2.11:8080"], "labels": {"zone": "a", "role": "rgw"}},
    {
        "targets": ["[2001:db8::12]:8081", "rgw-13.example.com:8080"],
        "labels": {"zone": "b", "role": "rgw"},
    },
    {"targets": ["192.0.2.99:9100"], "labels": {"role": "exporter"}},
]


class _Inventory(http.server.BaseHTTPRequestHandler):
    """Serves `body` with an ETag; checks `auth` when set; counts what it was asked."""

    body: ClassVar[bytes] = json.dumps(GROUPS).encode()
    status: ClassVar[int] = 200
    auth: ClassVar[str | None] = None  # the Authorization header it wants
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        _Inventory.seen.append(dict(self.headers))
        if self.auth is not None and self.headers.get("Authorization") != self.auth:
            self._answer(401, b"")
            return
        etag = f'"{hash(self.body) & 0xFFFF:x}"'
        if self.headers.get("If-None-Match") == etag:
            self._answer(304, b"", etag)
            return
        self._answer(self.status, self.body, etag)

    def _answer(self, status: int, body: bytes, etag: str | None = None) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def inventory(tmp_path):
    """An inventory on 127.0.0.1 (`tls`: https, with a CA in `ca`), reset per test."""
    started = []
    _Inventory.body, _Inventory.status, _Inventory.auth = json.dumps(GROUPS).encode(), 200, None
    _Inventory.seen = []

    def start(tls: bool = False):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Inventory)
        scheme = "http"
        if tls:
            certs = make_certs(tmp_path / "certs", "localhost")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certs / "server.pem", certs / "server.key")
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
            httpd.ca = certs / "ca.pem"
            scheme = "https"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        httpd.url = f"{scheme}://localhost:{httpd.server_address[1]}/sd"
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _source(url: str, **settings) -> HttpSdSource:
    target = Target("ns", "rgw", (ServicePort("http", 80),), ())
    return HttpSdSource(HttpSdSourceConfig(url=url, port_name="http", **settings), target)


def test_render_maps_groups_zones_and_labels_and_drops_what_is_not_an_address(inventory, tmp_path):
    server = inventory()
    source = {"type": "http_sd", "url": server.url, "zone_label": "zone",
              "match_labels": {"role": "rgw"}}  # fmt: skip
    config = write_config(tmp_path / "c.yaml", target_with("ns", "rgw", source))
    result = syncd("render", "--config", config, check=0)
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    slices = [d for d in documents if d["kind"] == "EndpointSlice"]
    assert endpoint_pairs(slices) == {
        ("192.0.2.10", 8080), ("192.0.2.11", 8080), ("2001:db8::12", 8081),
    }  # fmt: skip
    zones = {e["addresses"][0]: e.get("zone") for s in slices for e in s["endpoints"]}
    assert zones == {"192.0.2.10": "a", "192.0.2.11": "a", "2001:db8::12": "b"}
    assert "rgw-13.example.com" in result.stderr and "dropped" in result.stderr


def test_an_unchanged_inventory_costs_a_304(inventory):
    server = inventory()
    source = _source(server.url)
    first, interval = source.poll()
    second, _ = source.poll()
    assert interval == 30.0 and second is first
    assert "If-None-Match" not in _Inventory.seen[0]
    assert _Inventory.seen[1]["If-None-Match"]  # answered 304, a few bytes
    _Inventory.body = json.dumps(GROUPS[:1]).encode()
    third, _ = source.poll()
    assert len(third.backends) == 2 and third is not first


def test_tls_a_ca_file_and_credentials_from_files_rotated_without_a_restart(inventory, tmp_path):
    server = inventory(tls=True)
    token = tmp_path / "token"
    token.write_text("first\n")
    _Inventory.auth = "Bearer first"
    source = _source(server.url, ca_file=server.ca, bearer_token_file=token)
    assert len(source.fetch().backends) == 4  # the host name is no address
    _Inventory.auth, _Inventory.body = "Bearer second", json.dumps(GROUPS[:1]).encode()
    token.write_text("second\n")  # rotated: the next request carries it
    assert len(source.fetch().backends) == 2
    with pytest.raises(SourceError, match="TLS: the certificate does not verify"):
        _source(server.url).fetch()  # the system's CAs do not know this one
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    _Inventory.auth = "Basic " + base64.b64encode(b"syncd:s3cret").decode()
    basic = _source(server.url, ca_file=server.ca, username="syncd", password_file=password)
    assert basic.fetch().backends
    password.write_text("wrong\n")
    with pytest.raises(SourceError, match="the server answered 401"):
        basic.fetch()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"[]", 500, "the server answered 500"),
        (b"<html>", 200, "the answer is not JSON"),
        (b'{"targets": []}', 200, "not a list of target groups"),
        (b'[{"labels": {}}]', 200, "group 0 is not"),
        (json.dumps([{"targets": ["192.0.2.1:80"] * 2000}]).encode(), 200, "larger than max_bytes"),
    ],
)
def test_every_failure_is_an_error_never_an_empty_answer(inventory, body, status, says):
    server = inventory()
    _Inventory.body, _Inventory.status = body, status
    with pytest.raises(SourceError, match=says):
        _source(server.url, max_bytes=16384).fetch()


def test_an_empty_list_is_a_real_answer(inventory):
    server = inventory()
    _Inventory.body = b"[]"
    assert _source(server.url).fetch().backends == frozenset()


def test_once_keeps_what_is_applied_while_the_inventory_is_down(
    run_syncd, admin, namespace, inventory, tmp_path
):
    server = inventory()
    source = {"type": "http_sd", "url": server.url, "match_labels": {"role": "rgw"}}
    config = write_config(tmp_path / "c.yaml", target_with(namespace, "rgw", source))
    run_syncd(config)
    assert len(endpoint_pairs(slices_of(admin, namespace, "rgw"))) == 3
    _Inventory.status = 503
    result = run_syncd(config, check=1)
    assert "STALE" in result.stderr and "the server answered 503" in result.stderr
    assert len(endpoint_pairs(slices_of(admin, namespace, "rgw"))) == 3


def test_check_refuses_what_is_not_an_inventory_and_resources_read_no_files(tmp_path: Path):
    bad = {"type": "http_sd", "url": "ftp://inventory"}
    config = write_config(tmp_path / "c.yaml", target_with("ns", "rgw", bad))
    assert "is not an http:// or https:// URL" in syncd("check", "--config", config, check=2).stderr
    creds = {"type": "http_sd", "url": "http://user:pw@inventory/sd"}
    config = write_config(tmp_path / "c.yaml", target_with("ns", "rgw", creds))
    result = syncd("check", "--config", config, check=2)
    assert "credentials in the address" in result.stderr and "pw@" not in result.stderr
    manifest = tmp_path / "xsvc.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "syncd.io/v1alpha1",
                "kind": "ExternalService",
                "metadata": {"name": "rgw", "namespace": "team-a"},
                "spec": {
                    "ports": [{"name": "http", "port": 80}],
                    "sources": [
                        {"type": "http_sd", "url": "https://inventory/sd",
                         "bearer_token_file": "/var/run/secrets/token"}
                    ],
                },
            }
        )
    )  # fmt: skip
    refused = syncd("check", "--config", manifest, check=2)
    assert "sources[0].bearer_token_file: a resource cannot read files in syncd's pod" in (
        refused.stderr
    )
