"""Command line: argument parsing, what is printed, and exit codes. Nothing else.

Exit codes: 0 converged; 1 at least one target failed, conflicted or is stale (the others
were still applied); 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from syncd import __version__
from syncd.config import load_config
from syncd.config.checks import DNS1123_LABEL
from syncd.controller import Controller, DaemonSettings
from syncd.errors import ConfigError, KubeConfigError, KubeError
from syncd.kube import Kube, KubeSettings, load_client_configuration
from syncd.leader import LeaderElector, LeaderSettings
from syncd.model import (
    Config,
    ConsulQuerySourceConfig,
    ConsulSourceConfig,
    StaticSourceConfig,
    ready_count,
)
from syncd.observability import parse_listen_address, serve_metrics, setup_logging
from syncd.once import OnceSettings, ask_sources, run_once
from syncd.ownership import derive_owner_id, is_generic_config_name, valid_owner_id
from syncd.pipeline import OFFLINE, Outcome, TargetResult, run
from syncd.policy import PolicyState
from syncd.protected import valid_entry
from syncd.reconcile import source_problems
from syncd.served import probe_traffic_distribution
from syncd.sources import ConsulClients
from syncd.sources.consul_api import resolve_endpoint

EXIT_OK = 0
EXIT_TARGET_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("syncd")

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
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid label value (letters, digits, '-', '_', '.', at most 63)"
        )
    return text


def _namespace_list(text: str) -> tuple[str, ...]:
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


def _parser() -> argparse.ArgumentParser:
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

    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=os.environ.get("SYNCD_CONFIG"),
        help="config file (default: $SYNCD_CONFIG)",
    )
    common.add_argument(
        "--owner-id",
        type=_owner_id,
        default=os.environ.get("SYNCD_OWNER_ID") or None,
        help="this instance's identity, a label value on every object it writes: it updates "
        "and prunes only objects of its own identity (default: $SYNCD_OWNER_ID, else the "
        "config's owner_id, else the config file's name, e.g. ceph-rgw)",
    )
    common.add_argument(
        "--allow-protected",
        metavar="NS/NAME",
        action="append",
        default=[e for e in os.environ.get("SYNCD_ALLOW_PROTECTED", "").split(",") if e],
        help="let this config write a protected Service (in kube-system, kube-public, "
        "kube-node-lease, openshift, openshift-*, or default/kubernetes), by name: "
        "namespace/service or namespace/*; repeatable (default: $SYNCD_ALLOW_PROTECTED, "
        "comma-separated; see README: protected Services)",
    )
    common.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log detail on stderr (default: %(default)s)",
    )

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
        "field: message) and exits 2, or exits 0. Contacts nothing.",
    )
    check.add_argument("--kubeconfig", metavar="FILE", help="also check that it loads")
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
    run.add_argument("--once", action="store_true", help="one pass, then exit")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (create/update/delete with a diff) and write nothing",
    )
    run.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file")
    run.add_argument("--context", help="kubeconfig context (default: the current one)")
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
        "--metrics-address",
        metavar="HOST:PORT",
        type=_listen_address,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    run.add_argument(
        "--namespaces",
        type=_namespace_list,
        default=os.environ.get("SYNCD_NAMESPACES") or None,
        metavar="NS[,NS...]",
        help="namespaced mode: touch only these namespaces (list, watch, write and prune "
        "only there), so syncd can be bound by a Role in each instead of a ClusterRole; "
        "every target must be in one (default: the whole cluster, or $SYNCD_NAMESPACES)",
    )
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
    return parser


def entry() -> NoReturn:
    """The `syncd` command: main(), then exit at once.

    A process holding a large config and cluster cache would otherwise spend seconds
    freeing them one by one at exit; everything that matters (output, logs) is flushed
    first, and the cluster was left consistent before main() returned.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _few_malloc_arenas() -> None:
    """At most two glibc malloc arenas, as MALLOC_ARENA_MAX=2 would (unless that is set).

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and
    each keeps what it once held: with Consul readers and watches parsing answers on
    dozens of threads, a daemon following 10,000 services held 460 MiB instead of 325.
    Done before any thread starts; a no-op where the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    _few_malloc_arenas()
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not args.config:
        parser.error("--config FILE is required (or set SYNCD_CONFIG)")
    if args.owner_id is not None and not valid_owner_id(args.owner_id):  # from the environment
        parser.error(f"SYNCD_OWNER_ID: {args.owner_id!r} is not a valid label value")
    bad = [e for e in args.allow_protected if not valid_entry(e)]
    if bad:
        parser.error(f"--allow-protected: {bad[0]!r} is not 'namespace/service' or 'namespace/*'")
    try:
        config = load_config(args.config, args.allow_protected)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    gc.freeze()  # the config lives as long as the process: no need to scan it for cycles
    problems = _environment_problems(config, args)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    args.owner_id, origin = _identity(args.owner_id, config)
    log.info("owner id %r (%s)", args.owner_id, origin)
    generic = _generic_identity_warning(config, args.owner_id, origin)
    if generic is not None:
        print(generic, file=sys.stderr)
    if args.command == "run" and isinstance(args.namespaces, str):  # from the environment
        try:
            args.namespaces = _namespace_list(args.namespaces)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"SYNCD_NAMESPACES: {exc}")
    if args.command == "run" and args.namespaces:
        outside = [t.key for t in config.targets if t.namespace not in args.namespaces]
        if outside:
            parser.error(
                f"targets outside --namespaces {','.join(args.namespaces)}: {', '.join(outside)}"
            )
    if args.command == "run" and not args.lease_duration > args.renew_deadline > args.retry_period:
        parser.error(
            "--lease-duration must be longer than --renew-deadline, and that longer than "
            "--retry-period"
        )
    if args.command == "check":
        if args.kubeconfig:
            for warning in _cluster_warnings(config, args):
                print(warning, file=sys.stderr)
        return _check(config, args.owner_id, origin)
    if args.command == "render":
        return _render(config, args.owner_id)
    return _run(args, config)


def _environment_problems(config: Config, args: argparse.Namespace) -> list[str]:
    """What the config leaves to the environment, checked before anything is contacted:
    the CONSUL_* variables (when a source uses Consul) and, given one, the kubeconfig."""
    problems: list[str] = []
    if any(
        isinstance(s, ConsulSourceConfig | ConsulQuerySourceConfig)
        for t in config.targets
        for s in t.sources
    ):
        try:
            resolve_endpoint(config.consul)
        except ConfigError as exc:
            problems += [f"{config.path}: {problem}" for problem in exc.problems]
    if getattr(args, "kubeconfig", None) and args.command == "check":
        try:
            load_client_configuration(
                KubeSettings(kubeconfig=args.kubeconfig, context=args.context)
            )
        except KubeConfigError as exc:
            problems.append(f"syncd: {exc}")
    return problems


def _cluster_warnings(config: Config, args: argparse.Namespace) -> list[str]:
    """`check --kubeconfig`: field values the cluster would not keep (see syncd.served).
    A cluster that cannot be reached is no config problem: nothing is said then."""
    values = {
        t.traffic_distribution: t
        for t in config.targets
        if t.traffic_distribution and t.manage_service
    }
    if not values:
        return []
    try:
        kube = Kube.connect(
            KubeSettings(kubeconfig=args.kubeconfig, context=args.context, retry_attempts=1)
        )
    except KubeConfigError:
        return []
    warnings = []
    try:
        for value, target in values.items():
            why = probe_traffic_distribution(kube, target.namespace, value)
            if why is not None:
                warnings.append(
                    f"{config.path}: warning: target {target.key}: traffic_distribution "
                    f"{value}: the cluster at {kube.host} does not keep it ({why}); syncd "
                    "will leave it out"
                )
    finally:
        kube.close()
    return warnings


def _identity(given: str | None, config: Config) -> tuple[str, str]:
    """This instance's owner id, and where it comes from (see syncd.ownership)."""
    if given is not None:
        return given, "from --owner-id or $SYNCD_OWNER_ID"
    if config.owner_id is not None:
        return config.owner_id, "from the config's owner_id"
    return derive_owner_id(config.path), "from the config file's name"


def _generic_identity_warning(config: Config, owner_id: str, origin: str) -> str | None:
    """A warning when the owner id comes from a file name every install might use."""
    if origin != "from the config file's name" or not is_generic_config_name(config.path):
        return None
    return (
        f"{config.path}: warning: owner id {owner_id!r} comes from a generic file name; "
        "another install whose config has that name would share it and prune this one's "
        "targets: set owner_id in the config (or --owner-id)"
    )


def _check(config: Config, owner_id: str, origin: str) -> int:
    sources = [s for t in config.targets for s in t.sources]
    backends = sum(len(s.backends) for s in sources if isinstance(s, StaticSourceConfig))
    registries = sum(1 for s in sources if not isinstance(s, StaticSourceConfig))
    extra = f", {registries} registry sources" if registries else ""
    print(
        f"{config.path}: OK ({len(config.targets)} targets, {backends} static backends{extra}; "
        f"owner id {owner_id!r} {origin})"
    )
    return EXIT_OK


def _render(config: Config, owner_id: str) -> int:
    """The objects of every target, from the same pipeline as `run`, with no cluster."""
    documents: list[dict[str, Any]] = []
    status = EXIT_OK
    consul = ConsulClients(config.consul, 1)
    for target in config.targets:
        answers = ask_sources(target, consul)
        for problem in source_problems(target, answers):
            print(f"{target.key}: {problem}", file=sys.stderr)
        # No probes here: render never connects to backends.
        step = run(
            target,
            answers,
            PolicyState(),
            OFFLINE,
            now=0.0,
            address_policy=config.address_policy,
            owner_id=owner_id,
        )
        for warning in step.evaluation.warnings:
            print(f"{target.key}: warning: {warning}", file=sys.stderr)
        if step.plan is None:
            reason = step.evaluation.verdict.reason or (step.result.message if step.result else "")
            print(f"{target.key}: {reason}; nothing rendered", file=sys.stderr)
            status = EXIT_TARGET_FAILED
            continue
        documents.extend(dict(change.desired or {}) for change in step.plan.changes)
    print(f"# Rendered by syncd {__version__} from {config.path}")
    print(yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True), end="")
    return status


def _run(args: argparse.Namespace, config: Config) -> int:
    stop = threading.Event()
    one_shot = args.once or args.dry_run
    replica = f"{socket.gethostname()}_{uuid.uuid4().hex[:6]}"
    settings = KubeSettings(
        kubeconfig=args.kubeconfig,
        context=args.context,
        request_timeout=args.request_timeout,
        qps=args.kube_qps,
        burst=args.kube_burst,
        identity=f"{args.owner_id}; {replica}",  # who wrote, in the audit log
        # A one-shot run retries within a call; the daemon's queue retries the target
        # instead, so a call gives up quickly and an API server that is back is seen at once.
        retry_attempts=5 if one_shot else 3,
        retry_max_backoff=5.0 if one_shot else 1.0,
    )
    try:
        kube = Kube.connect(settings, stop)
    except KubeConfigError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            kube.version()
        except KubeError as exc:
            print(f"syncd: cannot use the Kubernetes API at {kube.host}: {exc}", file=sys.stderr)
            return EXIT_TARGET_FAILED
        if args.metrics_address:
            try:
                host, port = serve_metrics(args.metrics_address)
            except OSError as exc:
                print(
                    f"syncd: --metrics-address {args.metrics_address}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            log.info("metrics at http://%s:%d/metrics", host, port)
        _on_signals(stop)
        if one_shot:
            once = OnceSettings(
                owner_id=args.owner_id,
                dry_run=args.dry_run,
                workers=args.workers,
                namespaces=args.namespaces,
            )
            return _one_pass(kube, config, once, stop)
        daemon = DaemonSettings(
            resync_interval=args.resync_interval,
            workers=args.workers,
            stuck_after=args.stuck_after,
            namespaces=args.namespaces,
            allow_protected=tuple(args.allow_protected),
        )
        elector = None
        if args.leader_elect:
            lease = LeaderSettings(
                namespace=args.lease_namespace or _own_namespace(),
                name=args.lease_name or f"syncd-{args.owner_id}"[:253],
                identity=replica,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
            elector = LeaderElector(kube, lease)
            log.info("leader election on lease %s/%s as %s", lease.namespace, lease.name, replica)
        return _daemon(kube, config, args.owner_id, daemon, stop, elector)
    finally:
        kube.close()


def _on_signals(stop: threading.Event) -> None:
    def request_stop(signum, _frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _one_pass(kube: Kube, config: Config, settings: OnceSettings, stop: threading.Event) -> int:
    """Apply every target once; print one block per target, in config order."""
    writes_before = kube.writes
    lines: dict[str, tuple[list[str], list[str]]] = {}
    planned = 0
    lock = threading.Lock()

    def report(result: TargetResult) -> None:
        nonlocal planned
        text = _result_lines(result, settings.dry_run)  # now: the result is not kept
        with lock:
            lines[result.target] = text
            planned += len(result.changes)

    results = run_once(kube, config, settings, stop, report)
    for result in results:
        out, err = lines.get(result.target, ([], []))
        for line in err:
            print(line, file=sys.stderr)
        for line in out:
            print(line)
    failed = [r for r in results if not r.outcome.ok]
    writes = kube.writes - writes_before
    if settings.dry_run:
        print(f"dry run: {planned} changes planned, nothing written")
    elif failed:
        print(f"not converged: {len(failed)} of {len(results)} targets failed; {writes} writes")
    else:
        print(f"converged: {len(config.targets)} targets, {writes} writes")
    return EXIT_TARGET_FAILED if failed or stop.is_set() else EXIT_OK


_OUTPUT_LOCK = threading.Lock()  # the daemon's workers report at once: never mix lines


def _print_result(result: TargetResult, dry_run: bool) -> None:
    """A result's lines, each stream written in one call (whole lines, never interleaved)."""
    out, err = _result_lines(result, dry_run)
    with _OUTPUT_LOCK:
        if err:
            sys.stderr.write("".join(line + "\n" for line in err))
            sys.stderr.flush()
        if out:
            sys.stdout.write("".join(line + "\n" for line in out))


def _result_lines(result: TargetResult, dry_run: bool) -> tuple[list[str], list[str]]:
    """What a result prints: lines for stdout, lines for stderr."""
    out: list[str] = []
    err = [f"{result.target}: warning: {warning}" for warning in result.warnings]
    for change in result.changes:
        if dry_run:
            out.append(f"{result.target}: would {change.summary(planned=True)}")
            out.append(_indent(change.diff()))
        else:
            out.append(f"{result.target}: {change.summary()}")
    decision = result.decision
    size = ""
    if decision is not None:
        ready = ready_count(decision.backends)
        tier = f"tier {decision.tier}: " if decision.tier or decision.switched_from else ""
        size = f" ({tier}{decision.source}: {len(decision.backends)} backends, {ready} ready)"
        switch = decision.switch_sentence()
        if switch is not None:
            out.append(f"{result.target}: {switch}")
    if result.outcome is Outcome.CONVERGED:
        out.append(f"{result.target}: no changes{size}")
    elif result.outcome is Outcome.CHANGED:
        verb = "planned" if dry_run else "applied"
        note = f"; {result.message}" if result.message else ""
        out.append(f"{result.target}: {len(result.changes)} changes {verb}{size}{note}")
    else:
        line = f"{result.target}: {result.outcome.value.upper()}: {result.message}"
        out.append(line)
        err.append(line)
    return out, err


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """The pod's namespace in a cluster ($POD_NAMESPACE, else the service account's), or
    syncd."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "syncd"
    except OSError:
        return "syncd"


def _daemon(
    kube: Kube,
    config: Config,
    owner_id: str,
    settings: DaemonSettings,
    stop: threading.Event,
    elector: LeaderElector | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config."""

    def report(result: TargetResult) -> None:
        _print_result(result, dry_run=False)
        sys.stdout.flush()

    # A daemon's caches (views, slices, backends) keep the young generation busy: collecting
    # it less often halves the cost of a change to a large target. Not for --once, whose
    # short life is all allocation (its peak memory grew by a tenth with this).
    gc.set_threshold(50_000, 20, 100)
    controller = Controller(config, kube, owner_id, settings, report, stop, elector)

    def request_reload(_signum, _frame):
        log.info("received SIGHUP; reloading %s", config.path)
        controller.request_reload()

    signal.signal(signal.SIGHUP, request_reload)
    return controller.run()
