"""The command line syncd understands: commands, options, their defaults and their help.

Values are checked as they are parsed (ranges, label values, listen addresses), so a bad
option is one line naming it and exit 2, before anything is read or contacted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import NoReturn

from syncd import __version__
from syncd.http_server import parse_listen_address
from syncd.ownership import OWNER_ID_RULE, valid_owner_id
from syncd.syntax.checks import DNS1123_LABEL

EXIT_USAGE = 2

_DESCRIPTION = """\
Keep selectorless Kubernetes Services pointed at backends outside the cluster.

syncd reads backend addresses from the sources in a config file and writes the matching
EndpointSlices (and, on request, legacy Endpoints). It only ever modifies objects that carry
its own labels; anything else with the same name is reported as a conflict and left alone.
"""

_EPILOG = """\
commands:
  render   print the objects for every target as YAML (no cluster needed)
  check    validate a config; print every problem
  run      apply the config to the cluster (--once for one pass, --dry-run to only show)

exit codes:
  0  converged (or, for check/render, the config is valid)
  1  at least one target failed, conflicted or is stale; the others were still applied
  2  bad config or usage

example:
  syncd render --config config/ceph-rgw.yaml
  syncd run --config config/ceph-rgw.yaml --once --dry-run
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of `kind` within [low, high]."""

    def parse(text: str) -> float:
        what = "a whole number" if kind is int else "a number"
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} from {low:g} to {high:g}, got {text}")
        return value

    return parse


def _owner_id(text: str) -> str:
    if not valid_owner_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid owner id ({OWNER_ID_RULE})")
    return text


def namespace_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if not DNS1123_LABEL.match(n) or len(n) > 63]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of namespaces")
    return names


def _listen_address(text: str) -> str:
    try:
        parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="syncd",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    common = _common_options()

    commands.add_parser(
        "render",
        parents=[common],
        help="print the objects as YAML (no cluster needed)",
        description="Print the Service, EndpointSlices and Endpoints syncd would write, as "
        "kubectl-appliable YAML. Reads the sources; does not contact the cluster.",
    )
    check = commands.add_parser(
        "check",
        parents=[common],
        help="validate a config",
        description="Validate a config file, every static backends file it names, and what "
        "it leaves to the environment (CONSUL_* variables when a source uses Consul; the "
        "kubeconfig when --kubeconfig is given). Prints every problem (file:line: target: "
        "field: message) and exits 2, or exits 0. Contacts nothing, unless --kubeconfig is "
        "given: then it also reads that cluster, and writes nothing (its credential plugin "
        "runs, if the kubeconfig names one): Nodes and ServiceCIDRs, to warn of static "
        "backends in the cluster's own networks, and, for a traffic_distribution, a "
        "server-side dry run that stores nothing, to warn of a value the server drops.",
    )
    check.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="also check that it loads, and check the config against that cluster (reads only)",
    )
    check.add_argument("--context", help="kubeconfig context (default: the current one)")
    run = commands.add_parser(
        "run",
        parents=[common],
        help="apply the config to the cluster",
        description="Apply the config to the cluster named by the kubeconfig (--kubeconfig, "
        "$KUBECONFIG, ~/.kube/config) or the in-cluster service account. Prints one line "
        "per change. Without --once it runs until SIGTERM/SIGINT: it watches every source "
        "(Consul blocking queries, backends files) and syncd's own EndpointSlices, applies "
        "each change within a moment, repairs drift every --resync-interval, and reloads "
        "the config on SIGHUP or when the file changes (an invalid one is logged and the "
        "old one keeps running).",
    )
    _run_options(run)
    _pace_options(run)
    _leader_options(run)
    return parser


def _common_options() -> _Parser:
    """Options every command takes."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=os.environ.get("SYNCD_CONFIG"),
        help="config file, or - for standard input (default: $SYNCD_CONFIG)",
    )
    common.add_argument(
        "--owner-id",
        type=_owner_id,
        default=os.environ.get("SYNCD_OWNER_ID") or None,
        help="this instance's identity, a label value on every object it writes and its "
        "Lease's name: it updates and prunes only objects of its own identity; lowercase "
        "letters, digits, '-', '.' (default: $SYNCD_OWNER_ID, else the config's owner_id, "
        "else $SYNCD_DEFAULT_OWNER_ID (the Helm chart sets it to <namespace>-<release>), "
        "else the config file's name, e.g. ceph-rgw)",
    )
    common.add_argument(
        "--allow-protected",
        metavar="NS/NAME",
        action="append",
        default=[e for e in os.environ.get("SYNCD_ALLOW_PROTECTED", "").split(",") if e],
        help="let this config write a protected Service (in kube-system, kube-public, "
        "kube-node-lease, openshift, openshift-*, or default/kubernetes), by name: "
        "namespace/service or namespace/*; repeatable (default: $SYNCD_ALLOW_PROTECTED, "
        "comma-separated; see docs/ownership.md)",
    )
    common.add_argument(
        "--resources",
        action="store_true",
        default=os.environ.get("SYNCD_RESOURCES", "").lower() in ("1", "true", "yes"),
        help="run: also reconcile the ExternalService resources teams declare (all "
        "namespaces, or --namespaces), reporting in each one's status; the config may then "
        "have no targets (default: $SYNCD_RESOURCES; see docs/resources.md)",
    )
    common.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log detail on stderr (default: %(default)s)",
    )
    common.add_argument(
        "--log-format",
        default=os.environ.get("SYNCD_LOG_FORMAT") or "text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line on stdout and stderr (for log "
        "collectors) (default: $SYNCD_LOG_FORMAT, else %(default)s)",
    )
    return common


def _run_options(run: argparse.ArgumentParser) -> None:
    """What `run` does, where it reaches the cluster, and what it serves."""
    run.add_argument("--once", action="store_true", help="one pass, then exit")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (create/update/delete with a diff) and write nothing",
    )
    run.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file")
    run.add_argument("--context", help="kubeconfig context (default: the current one)")
    run.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        type=_listen_address,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    run.add_argument(
        "--namespaces",
        type=namespace_list,
        default=os.environ.get("SYNCD_NAMESPACES") or None,
        metavar="NS[,NS...]",
        help="namespaced mode: touch only these namespaces (list, watch, write and prune "
        "only there), so syncd can be bound by a Role in each instead of a ClusterRole; "
        "every target must be in one (default: the whole cluster, or $SYNCD_NAMESPACES)",
    )


def _pace_options(run: argparse.ArgumentParser) -> None:
    """How fast `run` goes, and when it calls itself stuck."""
    run.add_argument(
        "--resync-interval",
        type=_number(float, 1, 86400),
        default=300.0,
        metavar="SECONDS",
        help="without --once: compare every target with the cluster cache once per SECONDS, "
        "spread evenly over the interval (default: %(default)s)",
    )
    run.add_argument(
        "--workers",
        type=_number(int, 1, 64),
        default=4,
        metavar="N",
        help="targets reconciled at once; a target is never on two workers (default: %(default)s)",
    )
    run.add_argument(
        "--kube-qps",
        type=_number(float, 0, 100000),
        default=50.0,
        metavar="QPS",
        help="API requests per second at most, on average; 0 for no limit (default: %(default)s)",
    )
    run.add_argument(
        "--kube-burst",
        type=_number(int, 1, 100000),
        default=100,
        metavar="N",
        help="API requests allowed at once above --kube-qps (default: %(default)s)",
    )
    run.add_argument(
        "--stuck-after",
        type=_number(float, 1, 86400),
        default=120.0,
        metavar="SECONDS",
        help="/healthz fails when a worker has been busy with one target this long "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--request-timeout",
        type=_number(float, 1, 600),
        default=30.0,
        metavar="SECONDS",
        help="timeout of each API call (default: %(default)s)",
    )


def _leader_options(run: argparse.ArgumentParser) -> None:
    """Several replicas, one writer: the Lease and its timings."""
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="without --once: run as one of several replicas; only the holder of a Lease "
        "writes, the others stand by with warm caches (default: off; the shipped "
        "Deployment turns it on)",
    )
    run.add_argument(
        "--lease-namespace",
        metavar="NAMESPACE",
        help="namespace of the Lease (default: the pod's own in a cluster, else syncd)",
    )
    run.add_argument(
        "--lease-name", metavar="NAME", help="the Lease's name (default: syncd-<owner id>)"
    )
    run.add_argument(
        "--lease-duration",
        type=_number(float, 2, 600),
        default=15.0,
        metavar="SECONDS",
        help="a standby takes over a lease not renewed for this long (default: %(default)s)",
    )
    run.add_argument(
        "--renew-deadline",
        type=_number(float, 1, 600),
        default=10.0,
        metavar="SECONDS",
        help="the leader stops writing when it could not renew for this long; shorter than "
        "--lease-duration (default: %(default)s)",
    )
    run.add_argument(
        "--retry-period",
        type=_number(float, 0.2, 600),
        default=2.0,
        metavar="SECONDS",
        help="how often the lease is renewed, or tried (default: %(default)s)",
    )
