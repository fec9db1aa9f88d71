"""No secret reaches stdout, stderr or the log: the CLI run over configs and files that hold
marker secrets (a password in the Consul address, a backends file that is really a shadow
file, a token file, the token variable, a kubeconfig token), at debug log level, with every
command that reads them. Nothing here needs a server: the errors are the point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.helpers import REPO
from harness.kube_apiserver import free_port

MARKERS = {
    "password": "Pw-4f1c9e-marker",
    "shadow": "Sh-77ab02-marker",
    "token": "Tk-19c0d3-marker",
    "variable": "Ev-5e6f21-marker",
    "kubeconfig": "Kc-0b8a44-marker",
    "shadow-keys": "Sk-3d9e10-marker",
    "query": "Qt-8c2f55-marker",
}


def _files(tmp_path: Path) -> dict[str, Path]:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: every request fails
    (tmp_path / "shadow.yaml").write_text(
        f"- root:$6${MARKERS['shadow']}$Zx9:19000:0:99999:7:::\n- 'daemon:*:{MARKERS['shadow']}'\n"
    )
    # a real shadow file: each line ends in ':::', so YAML makes it a key (the leak was there)
    (tmp_path / "keys.yaml").write_text(
        f"root:$6${MARKERS['shadow-keys']}$Zx9:19000:0:99999:7:::\n"
        f"daemon:*:{MARKERS['shadow-keys']}:0:99999:7:::\n"
    )
    (tmp_path / "token").write_text(MARKERS["token"] + "\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://{closed}"}}],
                "users": [{"name": "u", "user": {"token": MARKERS["kubeconfig"]}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )

    def config(name: str, consul: dict, source: dict) -> Path:
        path = tmp_path / f"{name}.yaml"
        target = {
            "namespace": "storage",
            "service": "rgw",
            "ports": [{"name": "http", "port": 80}],
            "sources": [source],
        }
        document = (
            {"version": 1, "consul": consul, "targets": [target]}
            if consul
            else {
                "version": 1,
                "targets": [target],
            }
        )
        path.write_text(yaml.safe_dump(document))
        return path

    return {
        "password": config(
            "password",
            {"address": f"http://admin:{MARKERS['password']}@{closed}"},
            {"type": "consul", "service": "rgw"},
        ),
        "shadow": config("shadow", {}, {"type": "static", "file": "shadow.yaml"}),
        "token": config(
            "token",
            {"address": f"http://{closed}", "token_file": "token"},
            {"type": "consul", "service": "rgw"},
        ),
        "variable": config(
            "variable", {"address": f"http://{closed}"}, {"type": "consul", "service": "rgw"}
        ),
        "shadow-keys": config("shadow-keys", {}, {"type": "static", "file": "keys.yaml"}),
        "query": config("query", {}, {"type": "consul", "service": "rgw"}),
        "kubeconfig": kubeconfig,
    }


def _run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    result = subprocess.run(
        [sys.executable, "-m", "syncd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**environment, **(env or {})},
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("command", ["check", "render", "run --once", "run"])
def test_no_marker_secret_appears_in_any_output(command, tmp_path):
    files = _files(tmp_path)
    kube = ["--kubeconfig", str(files["kubeconfig"])]
    verb = command.split()
    extra = kube if verb[0] == "run" else []
    if verb == ["check"]:
        extra = kube
    outputs = []
    for name in ("password", "shadow", "shadow-keys", "token", "variable", "query"):
        env = {
            "variable": {"CONSUL_HTTP_TOKEN": MARKERS["variable"]},
            "query": {"CONSUL_HTTP_ADDR": f"http://consul:8500/?token={MARKERS['query']}"},
        }.get(name)
        outputs.append(
            _run(*verb, "--config", files[name], "--log-level", "debug", *extra, env=env)
        )
    text = "\n".join(outputs)
    assert text, "nothing was said at all"
    for what, marker in MARKERS.items():
        assert marker not in text, f"the {what} secret appeared in `syncd {command}`:\n{text}"


def test_consul_variables_that_would_mislead_are_said(tmp_path):
    files = _files(tmp_path)
    unset = _run("check", "--config", files["query"], env={"CONSUL_HTTP_ADDR": "http://$(NOPE)"})
    assert "CONSUL_HTTP_ADDR: $(NOPE) is not set in the environment" in unset
    lax = _run(
        "check", "--config", files["query"],
        env={"CONSUL_HTTP_ADDR": "https://consul:8501", "CONSUL_HTTP_SSL_VERIFY": "false"},
    )  # fmt: skip
    assert "CONSUL_HTTP_SSL_VERIFY=false is ignored: syncd always verifies" in lax
