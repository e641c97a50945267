#!/usr/bin/env bash
# Rewrites the wrapper modules' go.mod/go.sum from versions.env (KUBERNETES_SERVER_VERSION, ETCD_VERSION).
# Run it after changing either version, then commit tools/controlplane/*/go.{mod,sum}; `make setup` refuses
# to build from a go.mod that disagrees with versions.env.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=/dev/null
. ../../versions.env
export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOWORK=off

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
