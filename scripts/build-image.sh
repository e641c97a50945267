#!/usr/bin/env bash
# `make image`: build images/Dockerfile with the versions from versions.env, push it, and print its
# digest and the command that records it in overlays/dev. With a Docker engine with buildx (and a
# registry login, `docker login ghcr.io`) it builds with buildx; without one, with buildah
# (`repoctl image build`: overlay storage, else vfs, and chroot isolation in
# ~/.cache/support-assistant/containers; Debian-made bases where the pinned upstream ones cannot be
# pulled). See images/README.md.
#
# Environment (all optional):
#   VARIANT=gpu|cpu      gpu (default): the image the overlays run; cpu: <IMAGE>-cpu, for local smoke runs
#   IMAGE=...            repository to push to (default ghcr.io/acme-platform/support-assistant[-cpu])
#   PUSH=0               build and load into the local engine only (no registry digest, nothing to promote)
#   ALLOW_DIRTY=1        build from a working tree with uncommitted changes (revision label gets -dirty)
#   PYTHON_IMAGE, RAY_BASE_IMAGE_GPU, RAY_BASE_IMAGE_CPU   override the versions.env keys of the same name
#   DOCKER=docker        the docker CLI to run
#   BUILDER=docker|buildah   force one path (default: docker where an engine with buildx answers, else buildah)
#   BASES=auto|upstream|debian, BUNDLE_PROFILE=local|production   buildah path only (images/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-image: $*" >&2; exit 1; }

# An explicit DOCKER means that CLI's engine: no fallback to buildah.
DOCKER_GIVEN=${DOCKER:+1}
DOCKER=${DOCKER:-docker}
VARIANT=${VARIANT:-gpu}
PUSH=${PUSH:-1}
PYTHON=${PYTHON:-.venv/bin/python}

docker_usable() {
  command -v "$DOCKER" >/dev/null 2>&1 && "$DOCKER" info >/dev/null 2>&1 && "$DOCKER" buildx version >/dev/null 2>&1
}
BUILDER=${BUILDER:-}
if [[ -z $BUILDER ]]; then
  if [[ -n $DOCKER_GIVEN ]] || docker_usable || ! command -v buildah >/dev/null 2>&1; then BUILDER=docker; else BUILDER=buildah; fi
fi
if [[ $BUILDER == buildah ]]; then
  [[ -x .venv/bin/repoctl ]] || die ".venv/bin/repoctl not found: run \`make setup\` first"
  echo "build-image: no usable Docker engine with buildx; building with buildah (images/README.md)" >&2
  export VARIANT PUSH
  exec .venv/bin/repoctl image build
fi
[[ $BUILDER == docker ]] || die "BUILDER must be docker or buildah (got '$BUILDER')"

command -v "$DOCKER" >/dev/null 2>&1 \
  || die "'$DOCKER' not found: building the image needs a Docker engine with buildx (Docker Desktop, or docker-ce + docker-buildx-plugin); without one, BUILDER=buildah builds with buildah, see images/README.md"
"$DOCKER" info >/dev/null 2>&1 \
  || die "'$DOCKER info' failed: the Docker engine is not running or not reachable (DOCKER_HOST=${DOCKER_HOST:-unset})"
"$DOCKER" buildx version >/dev/null 2>&1 \
  || die "'$DOCKER buildx' is missing: install the buildx plugin (images/Dockerfile uses BuildKit bind mounts)"
[[ -x $PYTHON ]] || die "$PYTHON not found: run \`make setup\` first (it reads versions and models)"

# KEY from the environment, else from versions.env.
setting() {
  local key=$1 value=${!1:-}
  if [[ -z $value ]]; then
    value=$(sed -n "s/^${key}=//p" versions.env | tail -n 1)
  fi
  printf '%s' "$value"
}

RAY_VERSION=$(setting RAY_VERSION)
[[ -n $RAY_VERSION ]] || die "versions.env: RAY_VERSION is missing"
PYTHON_IMAGE=$(setting PYTHON_IMAGE)
case "$VARIANT" in
  gpu) RAY_KEY=RAY_BASE_IMAGE_GPU RAY_TAG="${RAY_VERSION}-py311-gpu" DEFAULT_IMAGE=ghcr.io/acme-platform/support-assistant ;;
  cpu) RAY_KEY=RAY_BASE_IMAGE_CPU RAY_TAG="${RAY_VERSION}-py311" DEFAULT_IMAGE=ghcr.io/acme-platform/support-assistant-cpu ;;
  *) die "VARIANT must be gpu or cpu (got '$VARIANT')" ;;
esac
RAY_BASE_IMAGE=$(setting "$RAY_KEY")
IMAGE=${IMAGE:-$DEFAULT_IMAGE}

[[ $PYTHON_IMAGE == *python:3.11*@sha256:* ]] \
  || die "versions.env: PYTHON_IMAGE=python:3.11-slim@sha256:<digest> is required (got '${PYTHON_IMAGE}'); get the digest with \`$DOCKER buildx imagetools inspect python:3.11-slim\` and append the key with a comment"
[[ $RAY_BASE_IMAGE == *"ray:${RAY_TAG}@sha256:"* ]] \
  || die "versions.env: ${RAY_KEY}=rayproject/ray:${RAY_TAG}@sha256:<digest> is required (got '${RAY_BASE_IMAGE}'); get the digest with \`$DOCKER buildx imagetools inspect rayproject/ray:${RAY_TAG}\` and append the key with a comment"

APP_VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  apps/support_assistant/pyproject.toml)
TAG="${APP_VERSION}-ray${RAY_VERSION}"
# name@revision for each model of the production profile: the image label `dev.acme.models`.
MODELS=$("$PYTHON" -c 'import sys, yaml
models = yaml.safe_load(open(sys.argv[1]))["profiles"]["production"]
print(",".join("%s@%s" % (m["name"], m["revision"]) for _, m in sorted(models.items())))' images/models.yaml)

VCS_REF=$(git rev-parse HEAD)
if [[ -n $(git status --porcelain) ]]; then
  [[ ${ALLOW_DIRTY:-0} == 1 ]] \
    || die "the working tree has uncommitted changes: a release image must match a commit (commit, or ALLOW_DIRTY=1 for a throwaway build)"
  VCS_REF="${VCS_REF}-dirty"
fi
SOURCE_URL=${SOURCE_URL:-$(git config --get remote.origin.url || echo unknown)}

metadata=$(mktemp)
trap 'rm -f "$metadata"' EXIT
output=(--load)
[[ $PUSH == 1 ]] && output=(--push)

echo "build-image: building ${IMAGE}:${TAG} (${VARIANT}, ray ${RAY_VERSION}, revision ${VCS_REF})" >&2
"$DOCKER" buildx build \
  --file images/Dockerfile \
  --platform linux/amd64 \
  --build-arg "PYTHON_IMAGE=${PYTHON_IMAGE}" \
  --build-arg "RAY_BASE_IMAGE=${RAY_BASE_IMAGE}" \
  --build-arg "RAY_VERSION=${RAY_VERSION}" \
  --build-arg "VARIANT=${VARIANT}" \
  --build-arg "APP_VERSION=${APP_VERSION}" \
  --build-arg "VCS_REF=${VCS_REF}" \
  --build-arg "SOURCE_URL=${SOURCE_URL}" \
  --build-arg "MODELS=${MODELS}" \
  --tag "${IMAGE}:${TAG}" \
  --metadata-file "$metadata" \
  "${output[@]}" \
  .

if [[ $PUSH != 1 ]]; then
  echo "build-image: loaded ${IMAGE}:${TAG} into the local engine (PUSH=0: no registry digest, nothing to promote)"
  exit 0
fi

# The manifest digest the registry serves, which is what the overlays pin.
DIGEST=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["containerimage.digest"])' "$metadata")
[[ $DIGEST =~ ^sha256:[0-9a-f]{64}$ ]] || die "no image digest in the buildx metadata ($metadata): '$DIGEST'"

echo "image:  ${IMAGE}:${TAG}"
echo "digest: ${DIGEST}"
if [[ $VARIANT == gpu ]]; then
  echo "record it in overlays/dev (then open a PR; see docs/release.md):"
  echo "  make promote FROM=${IMAGE}:${TAG}@${DIGEST} TO=dev"
fi
