#!/usr/bin/env bash
# Build the real servers the integration tests run (kube-apiserver, kube-proxy, etcd, consul,
# coredns, toxiproxy, and the tools kustomize, promtool and helm)
# from their published Go modules, and cache the binaries outside the repository, keyed by
# version.
#
# Usage: scripts/build-test-servers.sh            build what is missing, print the paths
#        scripts/build-test-servers.sh --check    exit 1 if anything is missing, build nothing
#
# Cache: $SYNCD_TOOLS_DIR (default ~/.cache/syncd/tools)/<name>-<version>/<name>
# The first build takes several minutes on two cores; later runs return at once.
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.36.3}"
# Older kube-apiservers for the version matrix (tests/integration/test_versions.py): the
# oldest that builds here (v1.29.6 does not: one of its modules is not served) and one in
# the middle. OpenShift 4.14-4.18 runs Kubernetes 1.27-1.31.
KUBERNETES_MATRIX="${KUBERNETES_MATRIX:-v1.30.14 v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"
# The newest Consul that is MPL-2.0 licensed *and* buildable from served modules: 1.15+
# needs consul/envoyextensions, which the module proxy does not serve; 1.16.4+ is BUSL.
CONSUL_VERSION="${CONSUL_VERSION:-v1.14.11}"
# Renders deploy/ for the manifest tests; the CRDs of ServiceMonitor and PrometheusRule
# come from the Prometheus Operator's module, so those manifests are validated too.
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.1}"  # v5.8.2+ need Go 1.27
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# promtool, to unit-test deploy/'s alert rules (`promtool test rules`); Prometheus' Go
# module is versioned v0.3xx.y for Prometheus 3.xx.y.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
# helm, to lint and render charts/syncd for the chart tests (tests/integration/test_helm.py)
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
# The cluster DNS of the per-backend name tests (tests/integration/test_cluster_dns.py)
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
COREDNS_PLUGINS="bind errors kubernetes log ready"  # compiled in; part of the cache key
COREDNS_BUILD="$COREDNS_VERSION+${COREDNS_PLUGINS// /.}"
# The fault proxy between syncd and its servers (tests/integration/test_faults.py): stalls,
# resets and latency as Toxiproxy's toxics. v2.5.0 is the newest the module proxy serves.
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.5.0}"
TOOLS_DIR="${SYNCD_TOOLS_DIR:-$HOME/.cache/syncd/tools}"

log() { printf '[build-test-servers] %s\n' "$*" >&2; }

# One build at a time: a second run (a test starting while `make servers` builds) waits
# for the first instead of wiping its work directory.
mkdir -p "$TOOLS_DIR"
exec 9>"$TOOLS_DIR/.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi

bin_path() { printf '%s/%s-%s/%s' "$TOOLS_DIR" "$1" "$2" "$1"; }

require_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "the Go toolchain is needed to build the test servers; install Go and retry"
    exit 1
  fi
}

# A throwaway module in the cache directory; $1 = work dir. Prints nothing.
new_module() {
  rm -rf "$1" && mkdir -p "$1"
  (cd "$1" && go mod init syncd.local/testservers >/dev/null 2>&1)
}

# Move a freshly built binary into place atomically, so an interrupted build never
# leaves a half-written binary that a later run would trust.
install_binary() { # $1 built file, $2 final path
  mkdir -p "$(dirname "$2")"
  mv -f "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
}

# Build one binary from a published Go module, unless it is cached.
#   $1 name  $2 version  $3 main package  $4 extra go.mod lines  $5 ldflags
build_from_module() {
  local name="$1" version="$2" package="$3" gomod_lines="$4" ldflags="$5" out work
  out="$(bin_path "$name" "$version")"
  [[ -x "$out" ]] && return 0
  require_go
  work="$TOOLS_DIR/.build/$name-$version"
  log "building $name $version from $package (the first build takes minutes)"
  new_module "$work"
  printf '%s\n' "$gomod_lines" >> "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$work/tools.go"
  (cd "$work" && log "resolving modules" && go mod tidy >&2)
  (cd "$work" && log "compiling $name" && CGO_ENABLED=0 go build -trimpath \
      -ldflags "$ldflags" -o "$work/$name" "$package")
  install_binary "$work/$name" "$out"
  rm -rf "$work"
  log "$name ready: $out"
}

# A binary of the k8s.io/kubernetes module: kube-apiserver, kube-proxy.
#   $1 name  $2 version (default $KUBERNETES_VERSION)
build_kubernetes_command() {
  local name="$1" version="${2:-$KUBERNETES_VERSION}"
  [[ -x "$(bin_path "$name" "$version")" ]] && return 0
  require_go
  # k8s.io/kubernetes points its staging modules at ./staging/...; as a dependency those
  # local paths do not exist, so pin each one to its published v0.X.Y twin.
  local mod staging_version minor ldflags="-s -w" pkg
  mod="$(cd /tmp && go mod download -json "k8s.io/kubernetes@$version" \
         | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  staging_version="v0.${version#v1.}"
  minor="${version#v1.}"; minor="${minor%%.*}"
  # Stamp the version: the API server derives its emulated version from it.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build_from_module "$name" "$version" "k8s.io/kubernetes/cmd/$name" \
    "$(echo "require k8s.io/kubernetes $version"
       grep -E '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging/' "$mod" \
         | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}')" \
    "$ldflags"
}

build_etcd() {
  build_from_module etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 \
    "require go.etcd.io/etcd/server/v3 $ETCD_VERSION" "-s -w"
}
build_kustomize() {
  build_from_module kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5 \
    "require sigs.k8s.io/kustomize/kustomize/v5 $KUSTOMIZE_VERSION" "-s -w"
}

build_promtool() {
  build_from_module promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool \
    "require github.com/prometheus/prometheus $PROMETHEUS_VERSION" "-s -w"
}

build_helm() {
  build_from_module helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "require helm.sh/helm/v3 $HELM_VERSION" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

# CoreDNS as a cluster runs it, with the plugins the tests use compiled in: its own main
# package pulls every plugin (and the cloud SDKs of route53, azure, clouddns ...), a
# custom build with fewer plugins is how CoreDNS documents building it. The plugins are
# CoreDNS's own code at this version, unchanged.
build_coredns() {
  local out work plugin
  out="$(bin_path coredns "$COREDNS_BUILD")"
  [[ -x "$out" ]] && return 0
  require_go
  work="$TOOLS_DIR/.build/coredns-$COREDNS_BUILD"
  log "building coredns $COREDNS_VERSION with the plugins: $COREDNS_PLUGINS"
  new_module "$work"
  echo "require github.com/coredns/coredns $COREDNS_VERSION" >> "$work/go.mod"
  {
    printf 'package main\n\nimport (\n\t"github.com/coredns/coredns/coremain"\n'
    for plugin in $COREDNS_PLUGINS; do
      printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "$plugin"
    done
    printf ')\n\nfunc main() { coremain.Run() }\n'
  } > "$work/main.go"
  (cd "$work" && log "resolving modules" && go mod tidy >&2)
  (cd "$work" && log "compiling coredns" && CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=release" \
      -o "$work/coredns" .)
  install_binary "$work/coredns" "$out"
  rm -rf "$work"
  log "coredns ready: $out"
}

build_toxiproxy() {
  build_from_module toxiproxy "$TOXIPROXY_VERSION" github.com/Shopify/toxiproxy/v2/cmd/server \
    "require github.com/Shopify/toxiproxy/v2 $TOXIPROXY_VERSION" \
    "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION"
}

prometheus_crds() { # prints the directory holding the CRDs (downloaded once, cached by Go)
  require_go
  local dir
  dir="$(cd /tmp && go mod download -json \
        "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  printf '%s/example/prometheus-operator-crd' "$dir"
}

build_consul() {
  # Consul's go.mod replaces its own api/sdk/proto-public submodules with local paths, which
  # do not exist for a dependency: require the published versions its go.mod names instead.
  local mod
  mod="$(cd /tmp && go mod download -json "github.com/hashicorp/consul@$CONSUL_VERSION" \
         | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  build_from_module consul "$CONSUL_VERSION" github.com/hashicorp/consul \
    "$(echo "require github.com/hashicorp/consul $CONSUL_VERSION"
       grep -E '^[[:space:]]*github.com/hashicorp/consul/(api|sdk|proto-public) v' "$mod" \
         | awk '{print "require " $1 " " $2}'
       grep -E '^replace launchpad.net/gocheck' "$mod")" \
    "-s -w -X github.com/hashicorp/consul/version.GitCommit=release"
}

if [[ "${1:-}" == "--check" ]]; then
  missing=0
  wanted=("kube-apiserver $KUBERNETES_VERSION" "kube-proxy $KUBERNETES_VERSION"
          "kube-controller-manager $KUBERNETES_VERSION"
          "etcd $ETCD_VERSION" "consul $CONSUL_VERSION" "kustomize $KUSTOMIZE_VERSION"
          "promtool $PROMETHEUS_VERSION" "helm $HELM_VERSION" "coredns $COREDNS_BUILD"
          "toxiproxy $TOXIPROXY_VERSION")
  for version in $KUBERNETES_MATRIX; do wanted+=("kube-apiserver $version"); done
  for b in "${wanted[@]}"; do
    set -- $b
    [[ -x "$(bin_path "$1" "$2")" ]] || { log "missing: $1 $2"; missing=1; }
  done
  exit "$missing"
fi

build_etcd
build_kubernetes_command kube-apiserver
build_kubernetes_command kube-proxy
build_kubernetes_command kube-controller-manager  # the garbage collector, role aggregation
for version in $KUBERNETES_MATRIX; do
  build_kubernetes_command kube-apiserver "$version"
done
build_consul
build_kustomize
build_promtool
build_helm
build_coredns
build_toxiproxy
crds="$(prometheus_crds)"
echo "KUBE_APISERVER=$(bin_path kube-apiserver "$KUBERNETES_VERSION")"
echo "KUBE_PROXY=$(bin_path kube-proxy "$KUBERNETES_VERSION")"
echo "KUBE_CONTROLLER_MANAGER=$(bin_path kube-controller-manager "$KUBERNETES_VERSION")"
matrix="$KUBERNETES_VERSION=$(bin_path kube-apiserver "$KUBERNETES_VERSION")"
for version in $KUBERNETES_MATRIX; do
  matrix+=",$version=$(bin_path kube-apiserver "$version")"
done
echo "KUBE_APISERVER_MATRIX=$matrix"
echo "ETCD=$(bin_path etcd "$ETCD_VERSION")"
echo "CONSUL=$(bin_path consul "$CONSUL_VERSION")"
echo "KUSTOMIZE=$(bin_path kustomize "$KUSTOMIZE_VERSION")"
echo "PROMTOOL=$(bin_path promtool "$PROMETHEUS_VERSION")"
echo "HELM=$(bin_path helm "$HELM_VERSION")"
echo "COREDNS=$(bin_path coredns "$COREDNS_BUILD")"
echo "TOXIPROXY=$(bin_path toxiproxy "$TOXIPROXY_VERSION")"
echo "PROMETHEUS_CRDS=$crds"
