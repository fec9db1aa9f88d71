"""The daemon under load: 1,000 targets on an API server of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from kubernetes import client as k8s

from harness.helpers import target, write_config
from harness.kube_apiserver import REPO
from syncd.kube import Kube, KubeSettings

pytestmark = pytest.mark.apiserver


def test_sigterm_with_1000_targets_being_applied_exits_within_2s_and_leaves_none_half_written(
    private_apiserver, tmp_path
):
    server = private_apiserver
    api = server.admin_client()
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "scale"}})
    api.close()
    config = write_config(
        tmp_path / "c.yaml",
        *(
            target("scale", f"svc-{n}", [f"172.16.{n // 250}.{n % 250 + 1}:80"])
            for n in range(1000)
        ),
    )
    log = (tmp_path / "daemon.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run", "--config", str(config), "--log-level", "info",
         "--kubeconfig", str(server.syncd_kubeconfig)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    admin = Kube.connect(KubeSettings(kubeconfig=str(server.admin_kubeconfig), qps=0))
    try:
        deadline = time.monotonic() + 60
        while len(admin.list("Service", "scale")) < 100:  # well into the cold sync (50 QPS)
            assert time.monotonic() < deadline, "the daemon did not start applying"
            time.sleep(0.2)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        took = time.monotonic() - started
        services = {s["metadata"]["name"] for s in admin.list("Service", "scale")}
        sliced = {
            s["metadata"]["labels"]["kubernetes.io/service-name"]
            for s in admin.list("EndpointSlice", "scale")
        }
    finally:
        if process.poll() is None:
            process.kill()
        admin.close()
    print(f"stopped {took:.2f}s after SIGTERM; {len(services)} of 1000 targets applied")
    assert took < 5  # not after finishing all 1,000 targets
    assert 100 <= len(services) < 1000  # stopped mid-way ...
    assert services == sliced  # ... and every target started was finished
