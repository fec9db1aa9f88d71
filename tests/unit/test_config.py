"""Config loading: the shipped example is valid, and every bad input is one clear line, exit 2."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from harness.helpers import CEPH_EXAMPLE, CEPH_PAIRS, REPO
from syncd.cli import EXIT_USAGE, main
from syncd.config import load_config, load_config_text
from syncd.errors import ConfigError
from syncd.model import Output

GOOD = """\
version: 1
targets:
  - namespace: storage
    service: rgw
    ports:
      - name: http
        port: 80
    sources:
      - type: static
        backends:
          - 192.0.2.1:8080
          - address: 192.0.2.2
            port: 8081
            ready: false
"""


def _problems(text: str, name: str = "bad.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, name)
    return caught.value.problems


def test_shipped_ceph_example_loads_with_its_12_gateways():
    config = load_config(CEPH_EXAMPLE)
    (target,) = config.targets
    assert (target.namespace, target.service, target.output) == (
        "storage",
        "ocs-external-rgw-lb",
        Output.ENDPOINTSLICES,
    )
    backends = target.sources[0].backends
    assert {(b.address, b.ports[0].port) for b in backends} == CEPH_PAIRS
    assert all(b.ready for b in backends)


def test_defaults_and_shorthand_backends():
    target = load_config_text(GOOD, "good.yaml").targets[0]
    assert target.manage_service is True
    assert target.max_endpoints_per_slice == 100
    assert target.ports[0].protocol == "TCP"
    first, second = target.sources[0].backends
    assert (first.address, first.ports[0].port, first.ready) == ("192.0.2.1", 8080, True)
    assert (second.ports[0].port, second.ready) == (8081, False)


def test_ipv6_backends_are_canonicalized():
    text = GOOD.replace("192.0.2.1:8080", "'[2001:0DB8:0:0::1]:8080'")
    backend = load_config_text(text, "x.yaml").targets[0].sources[0].backends[0]
    assert backend.address == "2001:db8::1"


def test_static_backends_file_resolves_beside_the_config(tmp_path):
    (tmp_path / "gateways.yaml").write_text("- 192.0.2.7:8080\n- 192.0.2.8:8080\n")
    text = GOOD.replace(
        "backends:\n          - 192.0.2.1:8080\n          - address: 192.0.2.2\n"
        "            port: 8081\n            ready: false\n",
        "file: gateways.yaml\n",
    )
    (tmp_path / "c.yaml").write_text(text)
    backends = load_config(tmp_path / "c.yaml").targets[0].sources[0].backends
    assert [b.address for b in backends] == ["192.0.2.7", "192.0.2.8"]


# Each bad input: (description, text transformation, expected line, expected fragment).
# The fragment must name the target (where there is one), the field and the problem.
BAD_INPUTS = [
    ("YAML syntax error", lambda t: t + "  - [unclosed\n", 16, "YAML syntax error"),
    ("non-mapping document", lambda t: "- just\n- a list\n", 1, "must be a mapping"),
    ("unknown top-level key", lambda t: t + "extra: 1\n", 15, "extra: unknown key 'extra'"),
    (
        "unknown target key",
        lambda t: t.replace("    ports:", "    portz: 1\n    ports:"),
        5,
        "target storage/rgw: portz: unknown key 'portz' (did you mean 'ports'?)",
    ),
    (
        "unknown port key",
        lambda t: t.replace("port: 80\n", "port: 80\n        target: 8080\n"),
        8,
        "target storage/rgw: ports[0].target: unknown key 'target'",
    ),
    (
        "unknown source key",
        lambda t: t.replace("type: static", "type: static\n        ttl: 5"),
        10,
        "sources[0].ttl: unknown key 'ttl'",
    ),
    (
        "unknown backend key",
        lambda t: t.replace("ready: false", "ready: false\n            w: 1"),
        15,
        "sources[0].backends[1].w: unknown key 'w'",
    ),
    (
        "invalid IP",
        lambda t: t.replace("192.0.2.1:8080", "192.0.2.300:8080"),
        11,
        "target storage/rgw: sources[0].backends[0]: '192.0.2.300' is not an IP address",
    ),
    (
        "invalid IP in mapping",
        lambda t: t.replace("address: 192.0.2.2", "address: gw1"),
        12,
        "sources[0].backends[1].address: 'gw1' is not an IP address",
    ),
    (
        "port 0",
        lambda t: t.replace("port: 80\n", "port: 0\n"),
        7,
        "target storage/rgw: ports[0].port: port 0 is out of range 1-65535",
    ),
    (
        "backend port above 65535",
        lambda t: t.replace("port: 8081", "port: 65536"),
        13,
        "sources[0].backends[1].port: port 65536 is out of range 1-65535",
    ),
    (
        "duplicate target",
        lambda t: t + t[t.index("  - namespace") :],
        15,
        "targets[1]: duplicate target storage/rgw (also targets[0])",
    ),
    (
        "invalid namespace",
        lambda t: t.replace("namespace: storage", "namespace: Storage_1"),
        3,
        "namespace: 'Storage_1' is not a valid namespace name",
    ),
    (
        "invalid service name",
        lambda t: t.replace("service: rgw", "service: 9rgw"),
        4,
        "service: '9rgw' is not a valid Service name",
    ),
    (
        "invalid port name",
        lambda t: t.replace("name: http", "name: HTTP!"),
        6,
        "ports[0].name: 'HTTP!' is not a valid port name",
    ),
    (
        "backend port name not a Service port",
        lambda t: t.replace("port: 8081", "ports: {https: 8081}"),
        13,
        "sources[0].backends[1].ports.https: 'https' is not a port of the Service (ports: 'http')",
    ),
    (
        "empty source list",
        lambda t: t[: t.index("    sources:")] + "    sources: []\n",
        8,
        "target storage/rgw: sources: at least one source is required",
    ),
    (
        "loopback backend",
        lambda t: t.replace("192.0.2.1:8080", "127.0.0.1:8080"),
        11,
        "'127.0.0.1' is a loopback address, which the Kubernetes API rejects",
    ),
    (
        "IPv6 loopback backend",
        lambda t: t.replace("192.0.2.1:8080", "'[::1]:8080'"),
        11,
        "'::1' is a loopback address",
    ),
    (
        "link-local backend",
        lambda t: t.replace("192.0.2.2", "169.254.169.254"),
        12,
        "'169.254.169.254' is a link-local address",
    ),
    (
        "IPv6 link-local backend",
        lambda t: t.replace("192.0.2.2", "fe80::1"),
        12,
        "'fe80::1' is a link-local address",
    ),
    (
        "unspecified backend",
        lambda t: t.replace("192.0.2.1:8080", "0.0.0.0:8080"),
        11,
        "'0.0.0.0' is a unspecified address",
    ),
    (
        "link-local multicast backend",
        lambda t: t.replace("192.0.2.2", "224.0.0.5"),
        12,
        "'224.0.0.5' is a link-local multicast address",
    ),
    (
        "IPv6 link-local multicast backend",
        lambda t: t.replace("192.0.2.2", "ff02::1"),
        12,
        "'ff02::1' is a link-local multicast address",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "line", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_one_line_naming_file_line_target_and_field(
    tmp_path, capsys, mutate, line, fragment
):
    path = tmp_path / "bad.yaml"
    path.write_text(mutate(GOOD))
    assert main(["check", "--config", str(path)]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    problems = captured.err.splitlines()
    assert problems, "no problem reported"
    assert any(fragment in problem for problem in problems), problems
    matching = next(p for p in problems if fragment in p)
    assert matching.startswith(f"{path}:{line}: "), matching


def test_missing_file_is_reported_with_its_name(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["check", "--config", str(missing)]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"{missing}: no such file"


def test_unreadable_file_is_reported_with_its_name(tmp_path, capsys):
    # A directory cannot be read as a file, even by root (who ignores permission bits).
    assert main(["check", "--config", str(tmp_path)]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"{tmp_path}: a directory; syncd reads")


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "fifo"])
def test_a_device_or_pipe_is_refused_in_one_line_before_it_is_read(special, tmp_path, capsys):
    if special == "fifo":
        special = str(tmp_path / "fifo")
        os.mkfifo(special)  # opening it would block until a writer comes
    assert main(["check", "--config", special]) == EXIT_USAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{special}: ") and "regular files only" in line


def test_a_file_over_the_size_cap_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("syncd.syntax.files.MAX_FILE_BYTES", 1000)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2000 + "\n")
    monkeypatch.setattr("syncd.config.loader.read_text_file", _capped(1000))
    assert main(["check", "--config", str(big)]) == EXIT_USAGE
    assert "more than the 1000" in capsys.readouterr().err


def _capped(limit):
    from syncd.syntax.files import read_text_file

    return lambda path: read_text_file(path, limit)


def test_missing_static_file_names_both_files(tmp_path):
    text = GOOD.replace(
        "backends:\n          - 192.0.2.1:8080\n", "file: gone.yaml\n        backends:\n"
    )
    problems = _problems(text)
    assert any("sources[0]: a static source needs exactly one of" in p for p in problems)
    text = GOOD[: GOOD.index("        backends:")] + "        file: gone.yaml\n"
    (problem,) = _problems(text, str(tmp_path / "c.yaml"))
    assert problem.startswith(f"{tmp_path / 'c.yaml'}:10: target storage/rgw: sources[0].file:")
    assert f"{tmp_path / 'gone.yaml'}: no such file" in problem


def test_error_inside_a_static_file_names_that_file_and_line(tmp_path):
    (tmp_path / "gw.yaml").write_text("- 192.0.2.1:8080\n- 192.0.2.999:8080\n")
    text = GOOD[: GOOD.index("        backends:")] + "        file: gw.yaml\n"
    (problem,) = _problems(text, str(tmp_path / "c.yaml"))
    # a backends file may hold anything: where, never the value
    assert f"{tmp_path / 'gw.yaml'}:2: [1]: (value not shown) is not an IP address" in problem


def test_every_problem_is_reported_not_just_the_first():
    text = GOOD.replace("service: rgw", "service: RGW").replace("192.0.2.1:8080", "x:1")
    text = text.replace("ready: false", "ready: maybe")
    assert len(_problems(text)) == 3


@pytest.mark.parametrize(
    "text",
    [
        "",
        "version: 2\ntargets: []\n",
        "version: 1\ntargets: {}\n",
        "a: &a [*a]\n",
        "version: 1\nversion: 1\ntargets: []\n",
        "version: !!python/object:os.system 1\n",
        "version: 2001-02-30\n",
        "? [a, b]\n: 1\n",
        "--- 1\n--- 2\n",
    ],
)
def test_odd_documents_give_config_errors(text):
    assert _problems(text)


def test_duplicate_yaml_keys_are_an_error_not_silently_merged():
    text = GOOD.replace("    service: rgw\n", "    service: rgw\n    service: other\n")
    assert any("duplicate key 'service'" in p for p in _problems(text))


def test_multi_port_service_needs_names_and_per_port_backends():
    text = GOOD.replace(
        "      - name: http\n        port: 80\n",
        "      - name: http\n        port: 80\n      - port: 443\n",
    )
    assert any(
        "a name is required when the Service has more than one port" in p for p in _problems(text)
    )
    two_ports = GOOD.replace(
        "      - name: http\n        port: 80\n",
        "      - name: http\n        port: 80\n      - name: https\n        port: 443\n",
    )
    problems = _problems(two_ports)
    assert any("'address:port' works for one-port Services only" in p for p in problems)
    assert any(
        "the Service has several ports; use 'ports' with: http, https" in p for p in problems
    )


def test_duplicate_backends_are_an_error():
    text = GOOD.replace("- 192.0.2.1:8080", "- 192.0.2.1:8080\n          - 192.0.2.1:8080")
    assert any("duplicate backend 192.0.2.1:http=8080" in p for p in _problems(text))


def test_same_address_on_two_ports_is_two_backends():
    text = GOOD.replace("- 192.0.2.1:8080", "- 192.0.2.1:8080\n          - 192.0.2.1:8081")
    assert len(load_config_text(text, "x.yaml").targets[0].sources[0].backends) == 3


def test_example_survives_a_yaml_round_trip(tmp_path):
    data = yaml.safe_load(Path(CEPH_EXAMPLE).read_text())
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).targets == load_config(CEPH_EXAMPLE).targets


def test_problems_are_single_lines():
    text = GOOD.replace("192.0.2.1:8080", "'a\\nb:1'")
    for problem in _problems(text):
        assert "\n" not in problem
        assert re.match(r"^bad\.yaml:\d+: ", problem)


CONSUL = (
    GOOD.replace(
        "      - type: static\n        backends:\n          - 192.0.2.1:8080\n"
        "          - address: 192.0.2.2\n            port: 8081\n            ready: false\n",
        "      - type: consul\n        service: rgw\n        tags: [prod]\n",
    )
    + "consul:\n  address: https://consul.example:8501\n  token_file: token\n"
)


def test_consul_source_and_connection_load_with_defaults():
    config = load_config_text(CONSUL, "/etc/syncd/c.yaml")
    (source,) = config.targets[0].sources
    assert (source.service, source.tags, source.port_name) == ("rgw", ("prod",), "http")
    assert source.warning_is_ready is True and source.consistency.value == "default"
    assert config.consul.address == "https://consul.example:8501"
    assert str(config.consul.token_file) == "/etc/syncd/token"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("tags: [prod]", "tags: prod"), "sources[0].tags: must be a list of tag strings"),
        (("tags: [prod]", "consistency: strong"), "'strong' is not one of: default, stale"),
        (("tags: [prod]", "address: public"), "sources[0].address: 'public' is not one of"),
        (("tags: [prod]", "port: https"), "sources[0].port: 'https' is not a port of the Service"),
        (("service: rgw\n        tags", "tags"), "missing required key 'service'"),
        (("token_file: token", "token: s3cret"), "consul.token: unknown key 'token'"),
        (("address: https://consul.example:8501", "address: 'a b'"), "is not host:port"),
        (
            ("type: consul", "type: etcd"),
            "unknown source type 'etcd' (one of: consul, consul_query, dns, ",
        ),
    ],
)
def test_bad_consul_settings_are_config_errors(change, fragment):
    problems = _problems(CONSUL.replace(*change))
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize("example", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(example):
    assert load_config(example).targets


TIERS = GOOD.replace(
    "    sources:\n",
    "    failover: {min_ready: 2, failback_after: 60}\n"
    "    guards: {max_removal_fraction: 0.25, confirm_after: 30}\n"
    "    allowed_cidrs: [192.0.2.0/24]\n"
    "    health_check:\n      type: https\n      path: /healthz\n"
    "      expected_status: [200, '300-399']\n      tls_server_name: rgw.internal\n"
    "      interval: 2\n      rise: 3\n"
    "    sources:\n      - type: consul_query\n        query: rgw-failover\n",
)


def test_tiers_checks_guards_and_policy_load():
    config = load_config_text(TIERS + "address_policy:\n  service_cidr: 10.96.0.0/12\n", "t.yaml")
    (target,) = config.targets
    assert (target.failover.min_ready, target.failover.failback_after) == (2, 60)
    assert (target.guards.max_removal_fraction, target.guards.confirm_after) == (0.25, 30)
    check = target.health_check
    assert (check.type, check.path, check.rise, check.fall) == ("https", "/healthz", 3, 3)
    assert check.expected_status == ((200, 200), (300, 399))
    assert [s.kind for s in target.sources] == ["consul_query", "static"]
    assert str(config.address_policy.denied[-1]) == "10.96.0.0/12"
    assert "169.254.0.0/16" in {str(n) for n in config.address_policy.denied}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("min_ready: 2", "min_ready: 0"), "failover.min_ready: must be a whole number from 1"),
        (("max_removal_fraction: 0.25", "max_removal_fraction: 2"), "must be a number from 0 to 1"),
        (
            ("type: https", "type: icmp"),
            "health_check.type: 'icmp' is not one of: tcp, http, https",
        ),
        (("path: /healthz", "path: healthz"), "health_check.path: must start with '/'"),
        (("[200, '300-399']", "[200, 'ok']"), "'ok' is not a status code"),
        (("rise: 3", "rise: 3\n      timeout: 9"), "timeout must not be longer than interval"),
        (("[192.0.2.0/24]", "[192.0.2.0/33]"), "'192.0.2.0/33' is not a CIDR"),
        (("query: rgw-failover", "query: ''"), "query: must be a non-empty string"),
    ],
)
def test_bad_tier_settings_are_config_errors(change, fragment):
    problems = _problems(TIERS.replace(*change))
    assert any(fragment in p for p in problems), problems


def test_static_backends_must_obey_the_address_policy():
    outside = _problems(TIERS.replace("192.0.2.1:8080", "198.51.100.1:8080"))
    assert any("198.51.100.1: outside the target's allowed_cidrs" in p for p in outside)
    multicast = _problems(GOOD.replace("192.0.2.1:8080", "239.1.2.3:8080"))
    assert any("239.1.2.3: in the denied range 224.0.0.0/4" in p for p in multicast)


def test_a_probe_ca_file_that_is_missing_or_not_a_ca_bundle_is_refused_by_check(tmp_path):
    """Else `check` says OK and every https probe fails at run time, then PANIC."""
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    for ca_file, says in (
        ("missing.pem", "missing.pem: no such file"),
        ("notes.txt", "notes.txt: not a PEM CA bundle"),
    ):
        text = GOOD + f"    health_check: {{type: https, ca_file: {ca_file}}}\n"
        (problem,) = _problems(text, str(tmp_path / "c.yaml"))
        assert "health_check.ca_file" in problem and says in problem, problem


def test_what_a_config_may_list_is_bounded_by_what_a_pod_can_hold(monkeypatch):
    """A 3.4 MB config of 200,000 backends once took 365 MB to render; a pod's limit is
    512Mi. At most 10,000 backends per target (as the CRD), 250,000 in all."""
    many = "\n".join(f"          - 10.1.{i // 256}.{i % 256}:8080" for i in range(10_001))
    text = GOOD.replace("          - 192.0.2.1:8080", many)
    (problem, *_) = _problems(text)
    assert "10,002 backends, more than the 10,000 a target may list" in problem
    monkeypatch.setattr("syncd.config.loader.MAX_STATIC_BACKENDS", 1)
    (problem,) = _problems(GOOD)
    assert "2 static backends in all, more than the 1 a config may list" in problem
