"""Consul credentials as the README states them, against a real Consul with ACLs on and
default deny: the config beats the environment, CONSUL_HTTP_TOKEN_FILE works, an empty
token is an error (never an anonymous request that Consul answers with nothing), and a
rotated token file takes effect without a restart, with no failed read and no empty answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from harness.helpers import REPO, endpoint_pairs, readiness, slices_of, target_with, wait_for

pytestmark = pytest.mark.apiserver


def _render(config, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    return subprocess.run(
        [sys.executable, "-m", "syncd", "render", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**environment, **env},
        timeout=60,
        check=False,
    )


def _reader(consul_acl, service: str) -> str:
    return consul_acl.create_token(
        f'service "{service}" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}'
    )


def _setup(consul_acl, namespace, tmp_path, **consul):
    service = f"cred-{namespace}"
    consul_acl.register(f"{service}-1", service, "192.0.2.1", 8080)
    config = tmp_path / "c.yaml"
    target = target_with(namespace, service, {"type": "consul", "service": service})
    config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "consul": {**consul_acl.config_section(), **consul},
                "targets": [target],
            }
        )
    )
    return service, config


def test_the_config_token_file_beats_a_wrong_token_in_the_environment(
    consul_acl, namespace, tmp_path
):
    service, _ = _setup(consul_acl, namespace, tmp_path)
    (tmp_path / "token").write_text(_reader(consul_acl, service) + "\n")  # stripped
    _, config = _setup(consul_acl, namespace, tmp_path, token_file="token")
    result = _render(config, CONSUL_HTTP_TOKEN="wrong-token", CONSUL_HTTP_ADDR="http://x:1")
    assert result.returncode == 0, result.stderr
    assert "192.0.2.1" in result.stdout


def test_the_token_file_variable_is_supported(consul_acl, namespace, tmp_path):
    service, config = _setup(consul_acl, namespace, tmp_path)
    (tmp_path / "token").write_text(_reader(consul_acl, service))
    result = _render(config, CONSUL_HTTP_TOKEN_FILE=str(tmp_path / "token"))
    assert result.returncode == 0, result.stderr
    assert "192.0.2.1" in result.stdout


def test_an_empty_token_is_an_error_not_an_empty_render(consul_acl, namespace, tmp_path):
    _service, config = _setup(consul_acl, namespace, tmp_path)
    result = _render(config, CONSUL_HTTP_TOKEN="")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CONSUL_HTTP_TOKEN is set but empty" in result.stderr
    assert "endpoints: []" not in result.stdout


def test_a_rotated_token_file_takes_effect_without_a_restart(
    daemon, consul_acl, admin, namespace, tmp_path
):
    service, _ = _setup(consul_acl, namespace, tmp_path)
    consul_acl.register(f"{service}-2", service, "192.0.2.2", 8080)  # one stays ready
    old = _reader(consul_acl, service)
    (tmp_path / "token").write_text(old)
    _, config = _setup(consul_acl, namespace, tmp_path, token_file="token")
    process = daemon(config)
    wait_for(lambda: endpoint_pairs(slices_of(admin, namespace, service)), "first sync")

    new = _reader(consul_acl, service)
    (tmp_path / "token").write_text(new + "\n")
    accessor = json.loads(consul_acl.request("GET", "/v1/acl/token/self", token=old))
    consul_acl.request("DELETE", f"/v1/acl/token/{accessor['AccessorID']}")  # revoke the old
    consul_acl.set_status(f"{service}-1", "critical")  # a change only the new token can read
    wait_for(
        lambda: readiness(slices_of(admin, namespace, service)).get(("192.0.2.1", 8080)) is False,
        "the change read with the new token",
    )
    consul_acl.register(f"{service}-3", service, "192.0.2.3", 8080)
    wait_for(
        lambda: ("192.0.2.3", 8080) in endpoint_pairs(slices_of(admin, namespace, service)),
        "a registration read with the new token",
    )
    log = process.log_path.read_text()
    assert "stale" not in log.lower() and "denied" not in log.lower(), log[-2000:]
    assert old not in log and new not in log
