"""The daemon's runtime against a real kube-apiserver: cache, queue, retries, memory.

- a converged target costs no API request at all, resyncs included;
- one backend change costs one write and one reconcile (its echo is recognised);
- an API server outage: a change made meanwhile is applied right after it is back,
  without waiting for a source event, a backoff or the resync;
- the removal guard holds a large removal found at start and at reload, like --once.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
import yaml

from harness.helpers import endpoint_pairs, slices_of, target, wait_for, write_config
from harness.kube_apiserver import free_port

pytestmark = pytest.mark.apiserver


def _metrics(address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _reconciles(address: str, **labels: str) -> float:
    return sum(
        value
        for name, value in _metrics(address).items()
        if name.startswith("syncd_reconciles_total{")
        and all(f'{k}="{v}"' in name for k, v in labels.items())
    )


def _backends_file(path, *addresses):
    path.write_text(yaml.safe_dump([f"{a}:8080" for a in addresses]))
    return path


def _file_target(namespace, service, file, **extra):
    return {
        "namespace": namespace,
        "service": service,
        "ports": [{"name": "http", "port": 80}],
        "sources": [{"type": "static", "file": str(file)}],
        **extra,
    }


def test_a_converged_daemon_makes_no_api_request_at_all_even_while_resyncing(
    daemon, apiserver, admin, namespace, tmp_path
):
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *(target(namespace, f"quiet-{n}", [f"192.0.2.{n + 1}:80"]) for n in range(5)),
    )
    daemon(config, "--resync-interval", "1", "--metrics-address", metrics)
    wait_for(lambda: all(slices_of(admin, namespace, f"quiet-{n}") for n in range(5)), "slices")
    time.sleep(1)  # the first reconciles are done
    mark = apiserver.audit.mark()
    resyncs = _reconciles(metrics, trigger="resync")
    time.sleep(3)  # three resync rounds of every target
    assert apiserver.audit.since(mark) == []  # not a write, not even a read
    assert _reconciles(metrics, trigger="resync") - resyncs >= 10


def test_one_backend_change_costs_one_write_and_one_reconcile(
    daemon, apiserver, admin, namespace, tmp_path
):
    metrics = f"127.0.0.1:{free_port()}"
    backends = _backends_file(tmp_path / "backends.yaml", "192.0.2.1", "192.0.2.2")
    config = write_config(tmp_path / "c.yaml", _file_target(namespace, "one", backends))
    daemon(config, "--metrics-address", metrics)
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, "one"))) == 2, "2 backends")
    time.sleep(0.5)
    before = _reconciles(metrics)
    mark = apiserver.audit.mark()
    _backends_file(backends, "192.0.2.1", "192.0.2.2", "192.0.2.3")
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, "one"))) == 3, "3 backends")
    time.sleep(1)  # the echo of the write has arrived by now
    writes = [(w.verb, w.resource) for w in apiserver.audit.writes_since(mark)]
    assert writes == [("update", "endpointslices")]
    assert _reconciles(metrics) - before == 1
    assert _reconciles(metrics, trigger="cluster") == 0  # its own echo woke nothing


def test_a_change_during_an_api_outage_is_applied_right_after_it_is_back(
    daemon, apiserver, admin, namespace, tmp_path
):
    backends = _backends_file(tmp_path / "backends.yaml", "192.0.2.1")
    config = write_config(tmp_path / "c.yaml", _file_target(namespace, "outage", backends))
    process = daemon(config)
    wait_for(lambda: slices_of(admin, namespace, "outage"), "the slice")

    apiserver.stop_apiserver()
    try:
        _backends_file(backends, "192.0.2.1", "192.0.2.2")  # the change, during the outage
        time.sleep(30)
    finally:
        apiserver.start_apiserver()  # returns once /readyz answers ok
    back = time.monotonic()
    wait_for(
        lambda: len(endpoint_pairs(slices_of(admin, namespace, "outage"))) == 2,
        "the change made during the outage",
        timeout=10,
    )
    took = time.monotonic() - back
    print(f"applied {took:.2f}s after the API server was ready again")
    assert took < 15  # not after a backoff of minutes, nor the 5-minute resync
    log = process.log_path.read_text()
    assert "watching Services again" in log
    assert process.poll() is None


def _twelve(namespace, tmp_path, name="guarded"):
    backends = _backends_file(tmp_path / "b.yaml", *(f"198.51.100.{n}" for n in range(1, 13)))
    return write_config(tmp_path / "c.yaml", _file_target(namespace, name, backends)), backends


def test_a_large_removal_found_at_start_is_held_like_once_holds_it(
    run_syncd, daemon, admin, namespace, tmp_path
):
    config, backends = _twelve(namespace, tmp_path)
    run_syncd(config)  # 12 applied
    _backends_file(backends, "198.51.100.1", "198.51.100.2")
    write_config(
        config,
        _file_target(namespace, "guarded", backends, guards={"confirm_after": 3}),
    )
    process = daemon(config)
    wait_for(lambda: "would remove 10 of 12 backends" in process.log_path.read_text(), "hold")
    held_at = time.monotonic()
    assert len(endpoint_pairs(slices_of(admin, namespace, "guarded"))) == 12
    wait_for(
        lambda: len(endpoint_pairs(slices_of(admin, namespace, "guarded"))) == 2,
        "the confirmed removal",
    )
    assert time.monotonic() - held_at >= 2


def test_a_large_removal_brought_by_a_reload_is_held(daemon, admin, namespace, tmp_path):
    config, _backends = _twelve(namespace, tmp_path)
    process = daemon(config)
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, "guarded"))) == 12, "12")
    write_config(
        config,
        target(namespace, "guarded", ["198.51.100.1:8080", "198.51.100.2:8080"]),
    )  # a different source: the target restarts, its memory comes from the cluster
    wait_for(lambda: "would remove 10 of 12 backends" in process.log_path.read_text(), "hold")
    time.sleep(1)
    assert len(endpoint_pairs(slices_of(admin, namespace, "guarded"))) == 12


def _hand_edit(admin, namespace: str, service: str) -> None:
    """Someone edits the slice by hand (again, if syncd wrote it in between: a 409)."""
    from syncd.errors import KubeConflict

    for _attempt in range(10):
        (live,) = slices_of(admin, namespace, service)
        try:
            admin.replace(dict(live, endpoints=[{"addresses": ["203.0.113.99"]}]))
            return
        except KubeConflict:
            continue
    raise AssertionError("the slice kept changing under the hand edit")


def test_a_slow_target_is_never_on_two_workers_and_ends_with_the_latest_answer(
    apiserver, admin, namespace, tmp_path, monkeypatch
):
    """The real controller in this process, with a sink made slow: file edits, hand edits
    of its slice and a 1 s resync keep queuing the target while it is being applied."""
    import threading

    from syncd.config import load_config
    from syncd.controller import Controller, DaemonSettings
    from syncd.kube import Kube, KubeSettings
    from syncd.sink import Sink

    backends = _backends_file(tmp_path / "b.yaml", "192.0.2.1")
    config = write_config(
        tmp_path / "c.yaml",
        _file_target(namespace, "slow", backends, guards={"max_removal_fraction": 1}),
    )
    inside: dict[str, int] = {}
    overlaps: list[str] = []
    applies = []
    lock = threading.Lock()
    real_apply = Sink.apply

    def slow_apply(self, plan):
        key = plan.target.key
        with lock:
            inside[key] = inside.get(key, 0) + 1
            if inside[key] > 1:
                overlaps.append(key)
            applies.append(key)
        try:
            time.sleep(0.3)
            return real_apply(self, plan)
        finally:
            with lock:
                inside[key] -= 1

    monkeypatch.setattr(Sink, "apply", slow_apply)
    stop = threading.Event()
    kube = Kube.connect(KubeSettings(kubeconfig=str(apiserver.syncd_kubeconfig)), stop)
    controller = Controller(
        load_config(config),
        kube,
        namespace,
        DaemonSettings(resync_interval=1, workers=8),
        stop=stop,
    )
    runner = threading.Thread(target=controller.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: slices_of(admin, namespace, "slow"), "the slice")
        for n in range(2, 8):
            _backends_file(backends, *(f"192.0.2.{m}" for m in range(1, n + 1)))
            _hand_edit(admin, namespace, "slow")
            time.sleep(0.7)
        wait_for(
            lambda: (
                endpoint_pairs(slices_of(admin, namespace, "slow"))
                == {(f"192.0.2.{m}", 8080) for m in range(1, 8)}
            ),
            "the last answer",
        )
    finally:
        stop.set()
        runner.join(timeout=5)
        kube.close()
    assert len(applies) >= 10  # it was busy: many reconciles of the one target
    assert overlaps == []
