"""The real kube-controller-manager, with only what syncd's tests need of it: the garbage
collector (dependents of a deleted owner are deleted: what syncd wrote for an
ExternalService goes with it even when syncd is not running) and ClusterRole aggregation
(roles labelled aggregate-to-edit/view reach the built-in edit and view roles)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness.kube_apiserver import KubeApiServer, ServerStartError, server_binaries, stop_process

CONTROLLERS = "garbagecollector,clusterrole-aggregation"


class KubeControllerManager:
    def __init__(self, apiserver: KubeApiServer, workdir: Path):
        self.apiserver = apiserver
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.log = workdir / "kube-controller-manager.log"

    def start(self, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    server_binaries()["kube-controller-manager"],
                    "--kubeconfig",
                    str(self.apiserver.admin_kubeconfig),
                    "--controllers",
                    CONTROLLERS,
                    "--leader-elect=false",
                    "--use-service-account-credentials=false",
                    "--secure-port=0",  # nothing to serve: the tests watch what it does
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            handle.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"kube-controller-manager exited {self.process.returncode}:\n"
                    + self.log.read_text()[-3000:]
                )
            if "all resource monitors have synced" in self.log.read_text():
                return  # the garbage collector knows every kind, ExternalService included
            time.sleep(0.2)
        raise ServerStartError(
            "kube-controller-manager's garbage collector did not sync:\n"
            + self.log.read_text()[-3000:]
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


__all__ = ["KubeControllerManager"]
