"""Whatever flags, environment and kubeconfig a user gives, syncd ends with exit 0, 1 or 2
and one-line messages, never a traceback.

The CLI's main() runs in this process (thousands of runs would take minutes as processes);
an exception escaping it is exactly what a user would see as a traceback. `run` talks to
the real test API server with credentials it refuses (401), or fails to load the
kubeconfig; it never gets as far as writing.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.helpers import CEPH_EXAMPLE, REPO
from syncd.cli import main

CONSUL_EXAMPLE = REPO / "config" / "consul-rgw.yaml"

texts = st.text(max_size=30)
numbers = st.one_of(
    st.integers(-(10**9), 10**9).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["0", "-1", "1e309", "nan", "", " ", "5s", "0x10", "1_000"]),
    texts,
)
addresses = st.one_of(
    texts,
    st.sampled_from(
        ["http://[::1", "http://127.0.0.1:99999", "127.0.0.1:0", "https://", "ftp://x:1",
         "localhost:8500", "http://user@host:1", "[::1]:8500", "a b:1", "host:-1"]
    ),
)  # fmt: skip

FLAGS = {
    "--workers": numbers,
    "--kube-qps": numbers,
    "--kube-burst": numbers,
    "--resync-interval": numbers,
    "--request-timeout": numbers,
    "--metrics-address": st.one_of(addresses, st.just("127.0.0.1:0")),
    "--owner-id": st.one_of(texts, st.sampled_from(["ok", "-bad", "a" * 64, "x.y_z"])),
    "--context": texts,
    "--log-level": st.sampled_from(["debug", "info", "warning", "error", "loud"]),
}
ENVIRONMENT = {
    "CONSUL_HTTP_ADDR": addresses,
    "CONSUL_HTTP_SSL": st.sampled_from(["true", "false", "1", "0", "maybe", ""]),
    "CONSUL_HTTP_TOKEN": st.one_of(texts, st.just("a\nb")),
    "CONSUL_CACERT": st.sampled_from(["/nonexistent/ca.pem", "", str(CEPH_EXAMPLE)]),
    "CONSUL_CLIENT_CERT": st.sampled_from(["/nonexistent/c.pem", ""]),
    "CONSUL_TLS_SERVER_NAME": texts,
    "SYNCD_OWNER_ID": st.one_of(texts, st.just("team-a")),
}


def _kubeconfigs(server: str, ca: str):
    """Kubeconfig files from garbage to nearly right (a token the server refuses)."""
    nearly = st.fixed_dictionaries(
        {
            "apiVersion": st.sampled_from(["v1", "v2", 3]),
            "kind": st.sampled_from(["Config", "Pod"]),
            "current-context": st.sampled_from(["c", "missing", ""]),
            "clusters": st.sampled_from(
                [
                    [{"name": "c", "cluster": {"server": server, "certificate-authority": ca}}],
                    [
                        {
                            "name": "c",
                            "cluster": {"server": server, "insecure-skip-tls-verify": True},
                        }
                    ],
                    [{"name": "c", "cluster": {"server": server}}],
                    [{"name": "c", "cluster": {"server": "not a url"}}],
                    [
                        {
                            "name": "c",
                            "cluster": {"server": server, "certificate-authority-data": "!!"},
                        }
                    ],
                    [],
                    "clusters",
                ]
            ),
            "users": st.sampled_from(
                [[{"name": "u", "user": {"token": "not-a-valid-token"}}], [{"name": "u"}], None]
            ),
            "contexts": st.sampled_from(
                [[{"name": "c", "context": {"cluster": "c", "user": "u"}}], [{}], 5]
            ),
        }
    ).map(lambda d: yaml.safe_dump(d))
    garbage = st.one_of(
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.sampled_from(["", "{", ": :", "- a\n- b", "apiVersion: v1\nkind: Config\n", "\t\x00"]),
    )
    return st.one_of(nearly, garbage)


def _run_main(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue() + err.getvalue()


@pytest.mark.apiserver
def test_no_input_ever_ends_in_a_traceback(apiserver):
    ca = str(apiserver.workdir / "certs" / "apiserver.crt")

    @settings(
        max_examples=int(os.environ.get("SYNCD_CLI_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        command=st.sampled_from(
            [["check"], ["render"], ["run", "--once"], ["run", "--once", "--dry-run"]]
        ),
        config=st.sampled_from([CEPH_EXAMPLE, CONSUL_EXAMPLE, Path("/nonexistent.yaml")]),
        flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=4).flatmap(
            lambda keys: st.fixed_dictionaries({k: FLAGS[k] for k in keys})
        ),
        env=st.dictionaries(st.sampled_from(sorted(ENVIRONMENT)), st.none(), max_size=4).flatmap(
            lambda keys: st.fixed_dictionaries({k: ENVIRONMENT[k] for k in keys})
        ),
        kubeconfig=_kubeconfigs(apiserver.url, ca),
    )
    def check(command, config, flags, env, kubeconfig):
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "kubeconfig"
            path.write_text(kubeconfig, encoding="utf-8", errors="replace")
            argv = [*command, "--config", str(config)]
            if command[0] == "run":
                argv += ["--kubeconfig", str(path)]
                argv += [item for flag, value in flags.items() for item in (flag, value)]
            elif "--owner-id" in flags:
                argv += ["--owner-id", flags["--owner-id"]]
            code, output = _run_main(argv, {k: v.replace("\x00", "") for k, v in env.items()})
        assert code in (0, 1, 2), (argv, env, output)
        assert "Traceback" not in output, (argv, env, output)

    check()
