#!/usr/bin/env bash
# Rewrites the wrapper modules' go.mod/go.sum from versions.env (KUBERNETES_SERVER_VERSION, ETCD_VERSION,
# FLUX_*_CONTROLLER_VERSION). Run it after changing a version, then commit tools/controlplane/*/go.{mod,sum};
# `make setup` refuses to build from a go.mod that disagrees with versions.env.
# `pin.sh flux` rewrites only the Flux controllers' wrappers, `pin.sh core` only kubernetes and etcd.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=/dev/null
. ../../versions.env
export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOWORK=off
parts=${1:-all}

pin_core() {

k8s=$KUBERNETES_SERVER_VERSION        # v1.X.Y
staging=v0.${k8s#v1.}                 # the staging modules are published as v0.X.Y
mod=$(go mod download -json "k8s.io/kubernetes@$k8s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
{
  printf 'module github.com/acme/support-assistant-gitops/tools/controlplane/kubernetes\n\n'
  printf 'go %s\n\n' "$(awk '$1 == "go" { print $2; exit }' "$mod")"
  printf 'require k8s.io/kubernetes %s\n\n' "$k8s"
  printf '// k8s.io/kubernetes replaces these with ./staging/src/...; a dependency'"'"'s replaces do not apply here.\n'
  printf 'replace (\n'
  # every `k8s.io/x => ./staging/src/k8s.io/x` of the pinned release's go.mod
  awk '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s '"$staging"'\n", $1, $1 }' "$mod"
  printf ')\n'
} >kubernetes/go.mod
rm -f kubernetes/go.sum
(cd kubernetes && go mod tidy)

printf 'module github.com/acme/support-assistant-gitops/tools/controlplane/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
  "$ETCD_VERSION" >etcd/go.mod
rm -f etcd/go.sum
(cd etcd && go mod tidy)
echo "pinned: k8s.io/kubernetes $k8s (staging $staging), go.etcd.io/etcd/server/v3 $ETCD_VERSION"
}

# The Flux controllers (docs/flux.md). Each go.mod replaces its own api module with ./api and pins a few
# dependencies (go-digest, kustomize api/kyaml, yaml.v3); the wrapper copies every replace except ./api (the
# published api module of the same version is that folder) and adds the pins the proxy makes necessary.
pin_flux() { # NAME MODULE VERSION [MODULE VERSION (a held-back pin)...]
  local name=$1 module=$2 version=$3
  shift 3
  local dir=$name gomod
  mkdir -p "$dir"
  gomod=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    printf 'module github.com/acme/support-assistant-gitops/tools/controlplane/%s\n\n' "$name"
    printf 'go %s\n\n' "$(awk '$1 == "go" { print $2; exit }' "$gomod")"
    printf 'require %s %s\n\n' "$module" "$version"
    printf '// %s@%s replaces these; a dependency'"'"'s replaces do not apply, so the main module repeats them.\n' "$module" "$version"
    printf 'replace (\n'
    go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    new = r["New"]
    if new["Path"].startswith("./"):
        continue  # ./api: the published api module at the same version is that folder
    old = r["Old"]["Path"] + (" " + r["Old"]["Version"] if r["Old"].get("Version") else "")
    print("\t" + old, "=>", new["Path"], new["Version"])'
    if (($#)); then
      printf '\t// Versions it requires that the Go proxy here refuses, held at one it serves (go mod download).\n'
      local pin
      for pin in "$@"; do
        printf '\t%s => %s\n' "${pin%% *}" "$pin"
      done
    fi
    printf ')\n'
  } >"$dir/go.mod"
  rm -f "$dir/go.sum"
  # -e: a test-only dependency of the controller (fluxcd/pkg/helmtestserver) is refused by the proxy here.
  (cd "$dir" && go mod tidy -e)
  echo "pinned: $module $version ($dir)"
}

if [[ $parts == all || $parts == core ]]; then
  pin_core
fi
if [[ $parts == all || $parts == flux ]]; then
  # fluxcd/pkg/artifact: source- and helm-controller require v0.18.3, which the proxy here refuses.
  artifact_pin='github.com/fluxcd/pkg/artifact v0.18.1'
  pin_flux source-controller github.com/fluxcd/source-controller "$FLUX_SOURCE_CONTROLLER_VERSION" "$artifact_pin"
  pin_flux kustomize-controller github.com/fluxcd/kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
  pin_flux helm-controller github.com/fluxcd/helm-controller "$FLUX_HELM_CONTROLLER_VERSION" "$artifact_pin"
fi
