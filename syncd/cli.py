"""Command line: what a command does with its arguments, what it prints, and exit codes.

The options are in `syncd.cli_parser`, the lines a result prints in `syncd.output`, and
what `run` builds (API client, daemon, leader election, process tuning) in `syncd.app`.

Exit codes: 0 converged; 1 at least one target failed, conflicted or is stale (the others
were still applied); 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from syncd import __version__, app
from syncd.cli_parser import build_parser, namespace_list
from syncd.cluster_networks import file_target_warnings, single_stack_warnings
from syncd.config import load_config
from syncd.config.resource import check_resource_manifests, is_resource_manifest
from syncd.errors import ConfigError, KubeConfigError, KubeError
from syncd.frozen import plain
from syncd.kube import Kube
from syncd.kube_transport import KubeSettings, load_client_configuration
from syncd.live import OFFLINE, LiveState
from syncd.logs import say, setup_logging
from syncd.model import (
    AddressPolicy,
    Config,
)
from syncd.network_watch import ClusterNetworkWatch
from syncd.once import ask_sources
from syncd.output import plural
from syncd.ownership import (
    OWNER_ID_RULE,
    OWNER_LABEL,
    derivation_note,
    derive_owner_id,
    is_generic_config_name,
    valid_owner_id,
)
from syncd.pipeline import headless_warning, run
from syncd.policy import PolicyState
from syncd.process_memory import tune_malloc
from syncd.protected import valid_entry
from syncd.reconcile import source_problems
from syncd.served import probe_traffic_distribution
from syncd.sources import ConsulClients
from syncd.sources.consul_api import resolve_endpoint
from syncd.sources.types import type_of
from syncd.syntax.files import read_text_file

EXIT_OK = 0
EXIT_TARGET_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("syncd")


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


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in ("text", "json"):  # from the environment
        parser.error(f"SYNCD_LOG_FORMAT: {args.log_format!r} is not text or json")
    setup_logging(args.log_level, args.log_format)
    if not args.config:
        parser.error("--config FILE is required (or set SYNCD_CONFIG)")
    _check_owner_variables(parser, args)
    bad = [e for e in args.allow_protected if not valid_entry(e)]
    if bad:
        parser.error(f"--allow-protected: {bad[0]!r} is not 'namespace/service' or 'namespace/*'")
    if args.command == "check" and args.config != "-":
        manifest = _resource_manifest(args.config)
        if manifest is not None:
            return _check_resources(args.config, manifest, args.allow_protected)
    try:
        config = load_config(args.config, args.allow_protected, not args.resources)
    except ConfigError as exc:
        for problem in exc.problems:
            say(problem)
        return EXIT_USAGE
    app.settle()  # the config lives as long as the process
    problems = _environment_problems(config, args)
    if problems:
        for problem in problems:
            say(problem)
        return EXIT_USAGE
    args.owner_id, origin = _identity(args.owner_id, config)
    log.info("owner id %r (%s)", args.owner_id, origin)
    generic = _generic_identity(config, args.owner_id, origin)
    if generic is not None and args.command == "run" and _in_a_pod():
        say(f"{config.path}: {generic}; not running in a pod without one")
        return EXIT_USAGE
    if generic is not None:
        say(f"{config.path}: warning: {generic}", "warning")
    if args.command == "run":
        _check_run_options(parser, args, config)
    if args.command == "check":
        if args.kubeconfig:
            for warning in _cluster_warnings(config, args):
                say(warning, "warning")
        return _check(config, args.owner_id, origin)
    if args.command == "render":
        return _render(config, args.owner_id)
    return app.run(args, config)


def _resource_manifest(path: str) -> list[Any] | None:
    """The documents of a file of ExternalServices (`check` takes those too), else None."""
    try:
        text = read_text_file(Path(path))
    except ConfigError:
        return None  # load_config says what is wrong with it
    if "ExternalService" not in text:
        return None
    try:
        documents = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError:
        return None
    return documents if documents and is_resource_manifest(documents[0]) else None


def _check_resources(path: str, documents: list[Any], allow_protected: list[str]) -> int:
    """`check` of ExternalService manifests: what syncd would make of each (the address
    policy is the default one here: the daemon's config may add to it)."""
    checked = check_resource_manifests(documents, AddressPolicy(), allow_protected)
    problems = [f"{path}: {line}" for resource in checked for line in resource.problems]
    for problem in problems:
        say(problem)
    if problems:
        return EXIT_USAGE
    names = ", ".join(f"{r.namespace}/{r.name}" for r in checked)
    say(
        f"{path}: OK ({plural(len(checked), 'ExternalService')}: {names})",
        "info",
        stream=sys.stdout,
    )
    return EXIT_OK


def _check_run_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, config: Config
) -> None:
    """What `run`'s options must agree on, with the environment's and the config (exit 2)."""
    if isinstance(args.namespaces, str):  # from the environment
        try:
            args.namespaces = namespace_list(args.namespaces)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"SYNCD_NAMESPACES: {exc}")
    if args.namespaces:
        outside = [t.key for t in config.targets if t.namespace not in args.namespaces]
        if outside:
            parser.error(
                f"targets outside --namespaces {','.join(args.namespaces)}: {', '.join(outside)}"
            )
    if not args.lease_duration > args.renew_deadline > args.retry_period:
        parser.error(
            "--lease-duration must be longer than --renew-deadline, and that longer than "
            "--retry-period"
        )


def _check_owner_variables(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Owner ids from the environment are checked like --owner-id (exit 2 if not valid)."""
    for variable, value in (
        ("SYNCD_OWNER_ID", args.owner_id),
        ("SYNCD_DEFAULT_OWNER_ID", os.environ.get("SYNCD_DEFAULT_OWNER_ID") or None),
    ):
        if value is not None and not valid_owner_id(value):
            parser.error(f"{variable}: {value!r} is not a valid owner id ({OWNER_ID_RULE})")


def _environment_problems(config: Config, args: argparse.Namespace) -> list[str]:
    """What the config leaves to the environment, checked before anything is contacted:
    the CONSUL_* variables (when a source uses Consul) and, given one, the kubeconfig."""
    problems: list[str] = []
    if any("consul" in type_of(s).needs for t in config.targets for s in t.sources):
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
    """`check --kubeconfig`: static backends in the cluster's own networks, and field values
    the cluster would not keep (see syncd.served). A cluster that cannot be reached is no
    config problem: nothing is said then."""
    values = {
        t.traffic_distribution: t
        for t in config.targets
        if t.traffic_distribution and t.manage_service
    }
    try:
        kube = Kube.connect(
            KubeSettings(kubeconfig=args.kubeconfig, context=args.context, retry_attempts=1)
        )
    except KubeConfigError:
        return []
    warnings = []
    try:
        networks = ClusterNetworkWatch(kube, config.address_policy, probe_namespace=None).load()
        for target in config.targets:
            backends = [b for s in target.sources for b in s.listed]
            lines = file_target_warnings(target, networks, backends)
            lines += single_stack_warnings(networks, backends)
            warnings += [f"{config.path}: warning: target {target.key}: {line}" for line in lines]
        warnings += _service_shape_warnings(kube, config, args.owner_id)
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


def _service_shape_warnings(kube: Kube, config: Config, owner_id: str) -> list[str]:
    """Services of this instance that `headless` would have otherwise: one list per
    namespace of syncd's own Services, not a read per target."""
    services: dict[tuple[str, str], Any] = {}
    try:
        for namespace in sorted({t.namespace for t in config.targets if t.manage_service}):
            for obj in kube.list("Service", namespace, f"{OWNER_LABEL}={owner_id}"):
                services[(namespace, obj["metadata"]["name"])] = obj
    except KubeError:  # not readable: nothing to say (run says it, when it runs)
        return []
    warnings = []
    for target in config.targets:
        live = LiveState.of(services.get((target.namespace, target.service)))
        shape = headless_warning(target, live, owner_id)
        if shape is not None:
            warnings.append(f"{config.path}: warning: target {target.key}: {shape}")
    return warnings


def _identity(given: str | None, config: Config) -> tuple[str, str]:
    """This instance's owner id, and where it comes from (see syncd.ownership)."""
    if given is not None:
        return given, "from --owner-id or $SYNCD_OWNER_ID"
    if config.owner_id is not None:
        return config.owner_id, "from the config's owner_id"
    default = os.environ.get("SYNCD_DEFAULT_OWNER_ID")
    if default:
        return default, "from $SYNCD_DEFAULT_OWNER_ID"
    note = derivation_note(config.path)
    return derive_owner_id(config.path), _FROM_FILE_NAME + (f": {note}" if note else "")


_FROM_FILE_NAME = "from the config file's name"


def _in_a_pod() -> bool:
    """Running in a Kubernetes pod (the kubelet sets this in every container)?"""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _generic_identity(config: Config, owner_id: str, origin: str) -> str | None:
    """What is wrong with an owner id that comes from a file name every install might use
    (config.yaml, stdin): two such installs share it and prune each other's targets."""
    if not origin.startswith(_FROM_FILE_NAME) or not is_generic_config_name(config.path):
        return None
    return (
        f"owner id {owner_id!r} comes from a generic file name; another install whose config "
        "has that name would share it and prune this one's targets: set owner_id in the "
        "config (or --owner-id)"
    )


def _check(config: Config, owner_id: str, origin: str) -> int:
    sources = [s for t in config.targets for s in t.sources]
    backends = sum(len(s.listed) for s in sources)
    registries = sum(1 for s in sources if not s.listed)
    extra = f", {plural(registries, 'registry source')}" if registries else ""
    targets = plural(len(config.targets), "target")
    say(
        f"{config.path}: OK ({targets}, {plural(backends, 'static backend')}{extra}; "
        f"owner id {owner_id!r} {origin})",
        "info",
        stream=sys.stdout,
    )
    return EXIT_OK


_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: ten times faster
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _render(config: Config, owner_id: str) -> int:
    """The objects of every target, from the same pipeline as `run`, with no cluster;
    printed a target at a time, so a large config is never held as YAML all at once."""
    print(f"# Rendered by syncd {__version__} from {config.path}")
    status = EXIT_OK
    consul = ConsulClients(config.consul, 1)
    for target in config.targets:
        answers = ask_sources(target, consul)
        for problem in source_problems(target, answers):
            say(f"{target.key}: {problem}", "warning")
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
            say(f"{target.key}: warning: {warning}", "warning")
        if step.plan is None:
            reason = step.evaluation.verdict.reason or (step.result.message if step.result else "")
            reason = reason.replace("; keeping what is applied", "")  # render applies nothing
            say(f"{target.key}: {reason}; nothing rendered")
            status = EXIT_TARGET_FAILED
            continue
        decision = step.plan.decision
        if decision.tier > 0:  # a failover: the higher tiers did not qualify
            say(
                f"{target.key}: rendering tier {decision.tier} ({decision.source}): "
                f"no higher tier has {target.failover.min_ready} ready backends",
                "warning",
            )
        documents = [plain(change.desired or {}) for change in step.plan.changes]
        text = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, explicit_start=True)
        sys.stdout.write(text)
    sys.stdout.flush()
    return status
