"""DNS source: config validation and the pure refresh rules."""

from __future__ import annotations

import pytest

from syncd.config import load_config_text
from syncd.errors import ConfigError
from syncd.model import AddressFamily
from syncd.sources.dns import DnsSourceConfig, refresh_after

BASE = """\
version: 1
targets:
  - namespace: storage
    service: rgw
    ports: [{name: http, port: 80}]
    sources:
      - type: dns
"""


def _load(source: str):
    return load_config_text(
        BASE + "".join(f"        {line}\n" for line in source.splitlines()), "dns.yaml"
    )


def _problems(source: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(source)
    return caught.value.problems


def test_srv_source_defaults():
    (source,) = _load("srv: _rgw._tcp.example.test").targets[0].sources
    assert source.srv == "_rgw._tcp.example.test" and source.service_port == "http"
    assert source.families == (AddressFamily.IPV4, AddressFamily.IPV6)
    assert (source.min_ttl, source.max_ttl, source.timeout, source.tcp) == (5, 300, 2, False)
    assert source.nameservers == ()  # the system resolver


def test_name_source_with_port_and_nameservers():
    (source,) = (
        _load(
            "name: rgw.example.test\nport: 8080\nfamilies: [ipv6]\n"
            "nameservers: ['192.0.2.53', '192.0.2.54:5353', '[2001:db8::53]:53']"
        )
        .targets[0]
        .sources
    )
    assert source.ports[0].port == 8080 and source.families == (AddressFamily.IPV6,)
    assert source.nameservers == (("192.0.2.53", 53), ("192.0.2.54", 5353), ("2001:db8::53", 53))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("port: 80", "exactly one of 'srv' (an SRV name) or 'name' (A/AAAA)"),
        ("srv: _a._tcp.x\nname: x", "exactly one of 'srv'"),
        ("srv: 'bad name!'", "'bad name!' is not a valid DNS name"),
        ("srv: _a._tcp.x\nport: 80", "SRV records carry the ports; use 'service_port'"),
        ("srv: _a._tcp.x\nservice_port: https", "'https' is not a port of the Service"),
        ("name: x.test", "give exactly one of 'port'"),
        ("name: x.test\nport: 80\nfamilies: [ipv5]", "must be a non-empty list of: ipv4, ipv6"),
        ("name: x.test\nport: 80\nnameservers: [dns.google]", "a nameserver is an IP address"),
        ("name: x.test\nport: 80\nnameservers: ['192.0.2.1:0']", "port out of range"),
        ("name: x.test\nport: 80\nmin_ttl: 60\nmax_ttl: 30", "min_ttl must not be larger"),
        ("name: x.test\nport: 80\ntimeout: 0", "timeout: must be a number from 0.1 to 60, got 0"),
    ],
)
def test_bad_dns_settings_are_config_errors(source, fragment):
    problems = _problems(source)
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize(("ttl", "expected"), [(0, 5), (2, 5), (60, 60), (3600, 300)])
def test_refresh_follows_the_ttl_clamped_to_min_and_max(ttl, expected):
    assert refresh_after(ttl, DnsSourceConfig(name="x")) == expected
