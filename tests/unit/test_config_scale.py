"""Large configs load, and the size limits name their real cause."""

from __future__ import annotations

import ipaddress

import pytest

from syncd.config import load_config_text
from syncd.errors import ConfigError
from syncd.syntax.yamldoc import MAX_ALIAS_VALUES


def _targets(count: int, backends: int) -> str:
    first = ipaddress.ip_address("172.16.0.0")
    lines = ["version: 1", "targets:"]
    for index in range(count):
        lines += [
            f"  - namespace: ns-{index % 10}",
            f"    service: svc-{index}",
            "    ports: [{name: http, port: 80}]",
            "    sources:",
            "      - type: static",
            "        backends:",
        ]
        lines += [f"          - {first + index * backends + n}:8080" for n in range(backends)]
    return "\n".join(lines) + "\n"


def test_ten_thousand_targets_of_ten_backends_load():
    config = load_config_text(_targets(10_000, 10), "big.yaml")
    assert len(config.targets) == 10_000
    assert sum(len(t.sources[0].backends) for t in config.targets) == 100_000


def test_an_alias_bomb_is_refused_and_the_message_says_aliases():
    bomb = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        bomb.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    bomb.append("targets: *a8")
    with pytest.raises(ConfigError) as caught:
        load_config_text("\n".join(bomb), "bomb.yaml")
    assert caught.value.problems == [
        f"bomb.yaml: aliases stand for more than {MAX_ALIAS_VALUES:,} values; "
        "write the values out or use fewer aliases"
    ]


def test_anchors_and_merge_keys_still_work_and_errors_keep_their_lines():
    text = """\
version: 1
defaults: &defaults
  namespace: storage
  ports: [{name: http, port: 80}]
targets:
  - <<: *defaults
    service: rgw-a
    sources: [{type: static, backends: ["192.168.7.50:8080"]}]
  - <<: *defaults
    service: rgw-b
    sources: [{type: static, backends: ["127.0.0.1:8080"]}]
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "c.yaml")
    (problem,) = [p for p in caught.value.problems if "loopback" in p]
    assert problem.startswith("c.yaml:11: target storage/rgw-b: sources[0].backends[0]:")
    assert any("unknown key 'defaults'" in p for p in caught.value.problems)
