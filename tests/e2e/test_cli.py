"""The CLI as a user runs it: a new process, real files, exit codes, stdout vs stderr."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.helpers import CEPH_EXAMPLE, REPO, syncd, target, target_with, write_config
from harness.kube_apiserver import free_port
from syncd.errors import KubeError
from syncd.kube import Kube, KubeSettings


def test_help_explains_commands_and_exit_codes():
    out = syncd("--help", check=0).stdout
    for needle in ("render", "check", "run", "exit codes", "2  bad config or usage"):
        assert needle in out
    run_help = syncd("run", "--help", check=0).stdout
    for flag in ("--once", "--dry-run", "--kubeconfig", "--owner-id"):
        assert flag in run_help


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "syncd"
    assert script.exists() or shutil.which("syncd")


def test_check_accepts_the_example():
    result = syncd("check", "--config", CEPH_EXAMPLE, check=0)
    assert result.stdout.strip() == (
        f"{CEPH_EXAMPLE}: OK (1 target, 12 static backends; "
        "owner id 'ceph-rgw' from the config's owner_id)"
    )


def test_an_owner_id_from_a_generic_file_name_is_warned_about(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CEPH_EXAMPLE.read_text().replace("owner_id: ceph-rgw", "# no owner_id"))
    result = syncd("check", "--config", config, check=0)
    assert "owner id 'config' comes from a generic file name" in result.stderr
    named = tmp_path / "gateways.yaml"
    named.write_text(config.read_text())
    assert "generic" not in syncd("check", "--config", named, check=0).stderr


def test_run_in_a_pod_refuses_an_owner_id_from_a_generic_file_name(tmp_path):
    """deploy/ and the chart mount every config as config.yaml: two installs on the derived
    id would prune each other. In a pod, run stops before contacting anything."""
    config = tmp_path / "config.yaml"
    config.write_text(CEPH_EXAMPLE.read_text().replace("owner_id: ceph-rgw", "# no owner_id"))
    in_a_pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    result = syncd("run", "--config", config, "--once", check=2, env=in_a_pod)
    assert f"{config}: owner id 'config' comes from a generic file name" in result.stderr
    assert "not running in a pod without one" in result.stderr
    assert "Traceback" not in result.stderr
    named = syncd("run", "--config", config, "--once", env={**in_a_pod, "SYNCD_OWNER_ID": "odf"})
    assert "generic file name" not in named.stderr  # it went on (to the cluster it lacks)
    chart = syncd("check", "--config", config, env={"SYNCD_DEFAULT_OWNER_ID": "syncd-rgw"})
    assert "owner id 'syncd-rgw' from $SYNCD_DEFAULT_OWNER_ID" in chart.stdout


def test_an_owner_id_that_cannot_name_a_lease_is_refused_by_check(tmp_path):
    config = tmp_path / "gateways.yaml"
    config.write_text(CEPH_EXAMPLE.read_text().replace("owner_id: ceph-rgw", "owner_id: Ceph_RGW"))
    result = syncd("check", "--config", config, check=2)
    assert "owner_id: 'Ceph_RGW' is not a valid owner id (lowercase letters" in result.stderr
    flag = syncd("check", "--config", CEPH_EXAMPLE, "--owner-id", "My_Id", check=2)
    assert "'My_Id' is not a valid owner id" in flag.stderr
    derived = tmp_path / "My Gateways.yaml"
    derived.write_text(CEPH_EXAMPLE.read_text().replace("owner_id: ceph-rgw", "# none"))
    said = syncd("check", "--config", derived, check=0).stdout
    assert "owner id 'my-gateways' from the config file's name: 'My Gateways' made a valid" in said


def test_check_prints_every_problem_on_stderr_and_exits_2(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", target("ns", "svc", ["127.0.0.1:80", "192.0.2.1:0"]))
    result = syncd("check", "--config", bad, check=2)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{bad}:") and "target ns/svc" in line for line in lines)


def test_render_prints_appliable_yaml_with_no_cluster():
    result = syncd("render", "--config", "config/ceph-rgw.yaml", check=0)  # as in the README
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds == ["Service", "EndpointSlice", "EndpointSlice"]
    assert result.stdout == (REPO / "tests" / "golden" / "ceph-rgw.yaml").read_text()


def test_missing_config_flag_is_a_usage_error():
    result = syncd("render", check=2)
    assert "--config FILE is required" in result.stderr


def test_missing_kubeconfig_is_a_usage_error(tmp_path):
    result = syncd(
        "run", "--config", CEPH_EXAMPLE, "--once", "--kubeconfig", tmp_path / "none", check=2
    )
    (line,) = result.stderr.strip().splitlines()  # one line: a fatal error, with its time
    assert line.endswith(f"Z syncd: {tmp_path / 'none'}: kubeconfig not found")


def test_unreachable_api_server_is_retried_then_reported_with_exit_1(tmp_path):
    port = free_port()  # nothing listens here
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    result = syncd("run", "--config", CEPH_EXAMPLE, "--once", "--kubeconfig", kubeconfig, check=1)
    assert f"cannot use the Kubernetes API at https://127.0.0.1:{port}" in result.stderr
    assert result.stderr.count("retrying in") == 4  # 5 attempts, capped jittered backoff


@pytest.mark.apiserver
def test_a_bad_config_sends_nothing_to_the_cluster(apiserver, tmp_path):
    bad = write_config(tmp_path / "bad.yaml", target("ns", "svc", ["169.254.169.254:80"]))
    mark = apiserver.audit.mark()
    result = syncd(
        "run", "--config", bad, "--once", "--kubeconfig", apiserver.syncd_kubeconfig, check=2
    )
    assert "link-local" in result.stderr
    assert apiserver.audit.since(mark) == []  # not even a read


@pytest.mark.apiserver
def test_validation_errors_from_the_api_are_not_retried(apiserver, namespace):
    kube = Kube.connect(KubeSettings(kubeconfig=str(apiserver.admin_kubeconfig)))
    invalid = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "Not_Valid", "namespace": namespace},
        "addressType": "IPv4",
        "endpoints": [],
        "ports": [],
    }
    with pytest.raises(KubeError) as caught:
        kube.create(invalid)
    assert caught.value.status == 422
    assert kube.calls["create"] == 1
    kube.close()


@pytest.mark.apiserver
def test_daemon_keeps_the_old_config_on_a_bad_edit_and_stops_within_2s_of_sigterm(
    daemon, admin, namespace, tmp_path
):
    import signal
    import time

    from harness.helpers import slices_of, wait_for

    config = write_config(tmp_path / "c.yaml", target(namespace, "loop", ["192.0.2.1:80"]))
    process = daemon(config)
    wait_for(lambda: slices_of(admin, namespace, "loop"), "first slice")
    config.write_text(config.read_text().replace("192.0.2.1:80", "127.0.0.1:80"))
    process.send_signal(signal.SIGHUP)
    time.sleep(1.5)  # the reload (SIGHUP and the file watcher) has happened by now
    (slice_,) = slices_of(admin, namespace, "loop")
    assert slice_["endpoints"][0]["addresses"] == ["192.0.2.1"]  # old config still applied

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) == 0
    assert time.monotonic() - started < 2
    log = process.log_path.read_text()
    assert "new config rejected, keeping the previous one" in log
    assert "'127.0.0.1' is a loopback address" in log


@pytest.mark.apiserver
def test_a_missing_namespace_fails_that_target_with_a_clear_message(apiserver, tmp_path):
    from harness.helpers import run_once

    config = write_config(tmp_path / "c.yaml", target("no-such-namespace", "svc", ["192.0.2.1:80"]))
    result = run_once(config, apiserver.syncd_kubeconfig, "--owner-id", "nsless", check=1)
    assert (
        "no-such-namespace/svc: FAILED: create Service no-such-namespace/svc: 404 "
        'namespaces "no-such-namespace" not found' in result.stderr
    )


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--resync-interval", "0", "--resync-interval: must be a number from 1 to 86400, got 0"),
        ("--resync-interval", "-5", "must be a number from 1 to 86400, got -5"),
        ("--resync-interval", "soon", "must be a number, got 'soon'"),
        ("--workers", "0", "--workers: must be a whole number from 1 to 64, got 0"),
        ("--workers", "2.5", "must be a whole number, got '2.5'"),
        ("--kube-qps", "-1", "--kube-qps: must be a number from 0 to 100000, got -1"),
        ("--kube-burst", "0", "--kube-burst: must be a whole number from 1 to 100000, got 0"),
        ("--request-timeout", "0", "--request-timeout: must be a number from 1 to 600, got 0"),
        ("--metrics-address", "nonsense", "--metrics-address: 'nonsense' is not HOST:PORT"),
        ("--metrics-address", "host:99999", "is not HOST:PORT (port 0-65535)"),
    ],
)
def test_every_numeric_flag_is_range_checked_with_one_line_and_exit_2(flag, value, says):
    result = syncd("run", "--config", CEPH_EXAMPLE, "--once", flag, value, check=2)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_check_validates_the_consul_environment_and_the_kubeconfig_it_is_given(tmp_path):
    config = write_config(
        tmp_path / "c.yaml", target_with("ns", "svc", {"type": "consul", "service": "rgw"})
    )  # no consul: section, so the environment decides
    bad_env = syncd_env({"CONSUL_HTTP_ADDR": "http://[::1", "CONSUL_HTTP_SSL": "maybe"})
    result = bad_env("check", "--config", config)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{config}: CONSUL_HTTP_ADDR: 'http://[::1' is not host:port" in result.stderr
    assert f"{config}: CONSUL_HTTP_SSL: 'maybe' is not true or false" in result.stderr
    assert "Traceback" not in result.stderr

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nclusters: [\n")
    result = syncd("check", "--config", CEPH_EXAMPLE, "--kubeconfig", kubeconfig, check=2)
    assert result.stderr.startswith(f"syncd: {kubeconfig}: not valid YAML")
    assert len(result.stderr.splitlines()) == 1


def test_a_config_with_a_bad_consul_address_fails_check_not_run(tmp_path):
    for address in ("http://[::1", "http://127.0.0.1:99999"):
        config = tmp_path / "c.yaml"
        config.write_text(
            (REPO / "config" / "consul-rgw.yaml")
            .read_text()
            .replace("http://127.0.0.1:8500", address)
        )
        result = syncd("check", "--config", config, check=2)
        assert "consul.address" in result.stderr and "Traceback" not in result.stderr


def syncd_env(env):
    import os
    import subprocess

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "syncd", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, **env},
            timeout=60,
        )

    return run


def test_render_says_which_tier_it_renders_and_never_that_it_keeps_anything(tmp_path):
    """render applies nothing: a failed source is "nothing rendered", named once, and a
    fallback to a lower tier is said."""
    consul = {"type": "consul", "service": "rgw"}
    static = {"type": "static", "backends": ["192.0.2.5:8080"]}
    unreachable = {"address": f"127.0.0.1:{free_port()}", "timeout": 0.5}
    tiers = write_config(
        tmp_path / "tiers.yaml", target_with("ns", "rgw", consul, static), consul=unreachable
    )
    result = syncd("render", "--config", tiers, check=0)
    assert "ns/rgw: rendering tier 1 (static list): no higher tier has 1 ready backends" in (
        result.stderr
    )
    alone = write_config(
        tmp_path / "alone.yaml", target_with("ns", "rgw", consul), consul=unreachable
    )
    result = syncd("render", "--config", alone, check=1)
    assert "ns/rgw: no source answered; nothing rendered" in result.stderr
    assert "keeping what is applied" not in result.stderr
    assert "sources[0] (consul service rgw): cannot reach Consul" in result.stderr
    assert result.stderr.count("consul service rgw") == 1


def _json_lines(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_cover_config_errors_check_render_and_fatal_errors(tmp_path):
    """docs/commands.md: with --log-format json every diagnostic line is one JSON object;
    the lines that matter most (a bad config, a fatal error) were plain text."""
    bad = write_config(tmp_path / "bad.yaml", target("ns", "svc", ["127.0.0.1:80"]))
    problems = _json_lines(syncd("check", "--config", bad, "--log-format", "json", check=2).stderr)
    assert problems[0]["level"] == "error" and "loopback" in problems[0]["message"]
    ok = _json_lines(syncd("check", "--config", CEPH_EXAMPLE, "--log-format", "json").stdout)
    assert ok[0]["level"] == "info" and ok[0]["message"].endswith("from the config's owner_id)")
    assert "OK (1 target, 12 static backends" in ok[0]["message"]
    rendered = syncd("render", "--config", CEPH_EXAMPLE, "--log-format", "json", check=0)
    assert _json_lines(rendered.stderr) == [] or all(_json_lines(rendered.stderr))
    nowhere = tmp_path / "kubeconfig"
    nowhere.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    fatal = syncd(
        "run", "--config", CEPH_EXAMPLE, "--kubeconfig", nowhere, "--once", "--log-format",
        "json", "--request-timeout", "2", check=1,
    )  # fmt: skip
    lines = _json_lines(fatal.stderr)
    assert lines[-1]["message"].startswith("syncd: cannot use the Kubernetes API at")
    assert lines[-1]["time"].endswith("Z")


def test_text_logs_are_stamped_in_utc_as_documented(tmp_path):
    import re

    result = syncd("run", "--config", CEPH_EXAMPLE, "--kubeconfig", tmp_path / "none", "--once",
                   "--log-level", "info", check=2)  # fmt: skip
    stamped = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    assert result.stderr.splitlines(), result.stderr
    assert all(stamped.match(line) for line in result.stderr.splitlines()), result.stderr


def test_a_kubeconfig_is_read_bounded_and_its_failing_plugin_is_its_problem(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = syncd("check", "--config", CEPH_EXAMPLE, "--kubeconfig", fifo, check=2)
    assert f"syncd: {fifo}: not a regular file; a kubeconfig must be one" in result.stderr
    plugin = tmp_path / "exec"
    plugin.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [
                    {
                        "name": "u",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": "false",
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    result = syncd("check", "--config", CEPH_EXAMPLE, "--kubeconfig", plugin, check=2)
    assert result.stderr.strip() == (
        f"syncd: {plugin}: its credential plugin failed: exec: process returned 1"
    )
    nothing = {"HOME": str(tmp_path), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""}
    alone = syncd("run", "--config", CEPH_EXAMPLE, "--once", check=2, env=nothing)
    assert "no kubeconfig: give --kubeconfig" in alone.stderr
    assert "Service host/port" not in alone.stderr


def test_control_characters_from_a_config_never_reach_the_terminal(tmp_path):
    """A value can forge a line (`\\n`), hide text (NUL) or reverse it (U+202E): every
    line syncd prints escapes them."""
    config = tmp_path / "forged.yaml"
    config.write_text(
        'version: 1\ntargets:\n  - namespace: "ns\\u202e\\u0000x"\n'
        '    service: "rgw\\nforged.yaml: OK (forged line)"\n'
        "    ports: [{name: http, port: 80}]\n"
        "    sources: [{type: static, backends: ['192.0.2.1:80']}]\n"
    )
    for args in (("check",), ("render",), ("check", "--log-format", "json")):
        result = syncd(*args, "--config", config, check=2)
        lines = result.stderr.splitlines()
        assert not any(line.startswith("forged.yaml: OK") for line in lines), lines
        assert "\u202e" not in result.stderr and "\x00" not in result.stderr
        assert "rgw\\nforged.yaml" in result.stderr or "rgw\\\\nforged.yaml" in result.stderr


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("version: 1", 'version: "1"'), "(the number, not a string: version: 1)"),
        (("name: http", "name: HTTP"), "'HTTP' is not a valid port name (lowercase"),
        (("- 192.168.7.50:8081", "- ' 192.168.7.50 :8081'"), "no spaces in 'address:port'"),
        (("- 192.168.7.50:8081", "- 192.168.7.50: 8081"), "reads as a mapping (a space after"),
        (("- 192.168.7.50:8081", "- 192.168.7.50:\uff18\uff10\uff18\uff11"), "is not 'addr"),
        (("- address: 192.168.7.55", "- address: ' 192.168.7.55'"), "no spaces around the address"),
    ],
)
def test_paper_cuts_are_one_clear_line(tmp_path, change, says):
    config = tmp_path / "gateways.yaml"
    config.write_text(CEPH_EXAMPLE.read_text().replace(*change, 1))
    result = syncd("check", "--config", config, check=2)
    assert says in result.stderr, result.stderr
    assert "name name" not in result.stderr


def test_check_says_every_problem_in_one_pass_and_reads_stdin(tmp_path):
    """A bad port no longer hides the bad backends behind it."""
    both = write_config(
        tmp_path / "both.yaml",
        {**target("ns", "svc", ["10.0.0.300:80"]), "ports": [{"name": "Http", "port": 80}]},
    )
    lines = syncd("check", "--config", both, check=2).stderr.splitlines()
    assert any("is not a valid port name" in line for line in lines)
    assert any("'10.0.0.300' is not an IP address" in line for line in lines)
    piped = subprocess.run(
        [sys.executable, "-m", "syncd", "check", "--config", "-"],
        input=CEPH_EXAMPLE.read_text(), capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.startswith("stdin: OK (1 target"), piped


def test_check_takes_an_externalservice_manifest_too(tmp_path):
    manifest = REPO / "config" / "resources" / "ceph-rgw.yaml"
    ok = syncd("check", "--config", manifest, check=0)
    assert ok.stdout.strip() == (f"{manifest}: OK (1 ExternalService: storage/ocs-external-rgw-lb)")
    bad = tmp_path / "xsvc.yaml"
    bad.write_text(manifest.read_text().replace("192.168.7.50:8081", "10.0.0.300:80"))
    result = syncd("check", "--config", bad, check=2)
    assert "'10.0.0.300' is not an IP address" in result.stderr
    assert "apiVersion: unknown key" not in result.stderr


def test_a_missing_token_file_says_no_such_file(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        target_with("ns", "svc", {"type": "consul", "service": "rgw"}),
        consul={"address": "127.0.0.1:8500", "token_file": "missing-token"},
    )
    result = syncd("check", "--config", config, check=2)
    assert "missing-token: no such file" in result.stderr
