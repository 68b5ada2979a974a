#!/usr/bin/env bash
# Containers without a registry: the Docker engine, a local Debian base image, a wheelhouse,
# our images, and the compose stack. `make compose-up` / `make compose-down` / `make images` call it.
#
#   scripts/containers.sh engine        start dockerd when none answers (installs docker.io if missing)
#   scripts/containers.sh engine-stop   stop the dockerd this script started (no-op otherwise)
#   scripts/containers.sh base          gmem/base:bookworm from Debian packages (debootstrap), if missing
#   scripts/containers.sh wheelhouse    wheelhouse/ for offline image builds, if stale
#   scripts/containers.sh images [NAME...]   build missing images (bank bank-encoder generator generator-gpu train)
#   scripts/containers.sh up | down [compose args]
#
# Settings (environment): HOSTNET=1 adds deploy/compose.hostnet.yml; PROJECT (compose project, default
# gmem); IMAGE_TAG (default: the package version); OFFLINE=1|0 forces the local base on or off (default:
# the local base when python:3.11-slim cannot be had); REBUILD=1 rebuilds images that exist;
# STATE_DIR (default .containers/) holds dockerd's pid and log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

HOSTNET=${HOSTNET:-}
PROJECT=${PROJECT:-gmem}
STATE_DIR=${STATE_DIR:-$ROOT/.containers}
WHEELS=$ROOT/wheelhouse
PY=${PY:-$ROOT/.venv/bin/python}
LOCAL_BASE=gmem/base:bookworm
PUBLIC_BASE=python:3.11-slim
REDIS_PUBLIC=redis:7.4-alpine
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
TAG=${IMAGE_TAG:-$VERSION}
BANK_URL=http://127.0.0.1:8001
GENERATOR_URL=http://127.0.0.1:8002
PLAYGROUND_URL=http://127.0.0.1:8003

say() { echo "[containers] $*" >&2; }
die() { echo "[containers] error: $*" >&2; exit 1; }

# Debian's client matches Debian's engine; a newer client elsewhere on PATH may want buildx.
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
export DOCKER_BUILDKIT=1

compose() {
  local files=(-f docker-compose.yml)
  # A service on the host network cannot publish ports: the host-network file replaces the ports file.
  if [ -n "$HOSTNET" ]; then files+=(-f deploy/compose.hostnet.yml); else files+=(-f docker-compose.override.yml); fi
  if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -p "$PROJECT" "${files[@]}" "$@"
  else
    "$DOCKER" compose -p "$PROJECT" "${files[@]}" "$@"
  fi
}

# ------------------------------------------------------------------ engine
engine() {
  if [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then return 0; fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1 \
      || [ ! -x /usr/bin/docker ] || ! command -v debootstrap >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "no Docker engine answers and installing one needs root (apt-get install docker.io docker-compose debootstrap)"
    say "installing docker.io docker-compose debootstrap (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null \
      || die "apt-get install docker.io docker-compose debootstrap failed"
    DOCKER=/usr/bin/docker
  fi
  [ "$(id -u)" -eq 0 ] || die "no Docker engine answers at ${DOCKER_HOST:-/var/run/docker.sock}; start dockerd (needs root)"
  mkdir -p "$STATE_DIR"
  say "starting dockerd (log $STATE_DIR/dockerd.log)"
  # No bridge or iptables: the machine may not allow them, and every service here uses the host network
  # or compose's own network without NAT.
  nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    --pidfile "$STATE_DIR/dockerd.pid" >"$STATE_DIR/dockerd.log" 2>&1 &
  echo $! >"$STATE_DIR/dockerd.started"
  for _ in $(seq 1 120); do
    if "$DOCKER" info >/dev/null 2>&1; then say "dockerd is up"; return 0; fi
    if ! kill -0 "$(cat "$STATE_DIR/dockerd.started")" 2>/dev/null; then
      rm -f "$STATE_DIR/dockerd.started"
      die "dockerd exited at start:
$(tail -n 20 "$STATE_DIR/dockerd.log")"
    fi
    sleep 0.5
  done
  die "dockerd did not answer within 60 s:
$(tail -n 20 "$STATE_DIR/dockerd.log")"
}

engine_stop() {
  local f=$STATE_DIR/dockerd.started pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the dockerd this script started (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$f"
}

# ------------------------------------------------------------------ base image and wheelhouse
debian_mirror() {
  local m
  m=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -m1 -o 'https\?://[^ ]*debian[^ ]*' | grep -v security || true)
  echo "${m:-http://deb.debian.org/debian}"
}

base() {
  if "$DOCKER" image inspect "$LOCAL_BASE" >/dev/null 2>&1 && [ -z "${REBUILD_BASE:-}" ]; then return 0; fi
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (apt-get install debootstrap)"
  local dir mirror t0
  t0=$(date +%s)
  dir=$(mktemp -d /tmp/gmem-base.XXXXXX)
  mirror=$(debian_mirror)
  say "building $LOCAL_BASE with debootstrap from $mirror"
  # python3 (3.11 on bookworm) with venv for our images; redis-server so the offline stack has a redis.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,redis-server \
    bookworm "$dir/root" "$mirror" >"$dir/debootstrap.log" 2>&1 \
    || { tail -n 20 "$dir/debootstrap.log" >&2; rm -rf "$dir"; die "debootstrap failed"; }
  rm -rf "$dir"/root/var/cache/apt/archives/*.deb "$dir"/root/var/lib/apt/lists/* \
    "$dir"/root/usr/share/doc/* "$dir"/root/usr/share/man/* "$dir"/root/usr/share/locale/*
  tar --numeric-owner -C "$dir/root" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$dir"
  say "$LOCAL_BASE built in $(( $(date +%s) - t0 )) s"
}

# pip's warnings about absent local index folders are noise; its real errors still show and fail.
quiet_pip() {
  local rc=0 log; log=$(mktemp)
  "$PY" -m pip "$@" >"$log" 2>&1 || rc=$?
  grep -v -E 'is ignored: it is neither|^[[:space:]]*$' "$log" >&2 || true
  rm -f "$log"; return $rc
}

wheelhouse() {
  # wheelhouse/common: the torch-free closure (bank, CLI) plus setuptools, so `pip install .` builds offline;
  # wheelhouse/torch: what the generator, encoder and training add; wheelhouse/own: our wheel.
  # Images install exactly the versions of the project's venv (pip freeze -> constraints.txt), so
  # containers and venv serve the same bytes. Dependencies are fetched again only when those or
  # pyproject.toml change; our wheel whenever the code does.
  [ -x "$PY" ] || die "$PY is missing: run \`make setup\` first"
  local deps code t0
  t0=$(date +%s)
  deps=$( { cat pyproject.toml; "$PY" -m pip freeze --exclude-editable 2>/dev/null; } | sha256sum | cut -d' ' -f1)
  code=$( { cat pyproject.toml; find gmem services shared training -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
            -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
  mkdir -p "$WHEELS"
  if [ "$(cat "$WHEELS/.code" 2>/dev/null)" != "$code" ]; then
    rm -rf "$WHEELS/own" build; mkdir -p "$WHEELS/own"
    # Fixed zip timestamps: the same tree gives the same wheel (and the same image layer).
    SOURCE_DATE_EPOCH=315532800 quiet_pip wheel -q --no-deps --no-build-isolation -w "$WHEELS/own" . \
      || die "building our wheel failed"
    rm -rf build ./*.egg-info
    echo "$code" >"$WHEELS/.code"
  fi
  if [ "$(cat "$WHEELS/.deps" 2>/dev/null)" != "$deps" ]; then
    say "fetching dependencies into $WHEELS (torch from the machine's local wheels)"
    rm -rf "$WHEELS/common" "$WHEELS/torch"; mkdir -p "$WHEELS/common" "$WHEELS/torch"
    "$PY" -m pip freeze --exclude-editable | grep -v -E '^(gmem-serving|-e |.* @ )' >"$WHEELS/constraints.txt"
    local own dl
    own=$(ls "$WHEELS"/own/gmem_serving-*.whl)
    dl=(download -q --only-binary=:all: -c "$WHEELS/constraints.txt")
    quiet_pip "${dl[@]}" -d "$WHEELS/common" "$own[bank]" setuptools || die "pip download (common) failed"
    rm -f "$WHEELS"/common/gmem_serving-*.whl
    quiet_pip "${dl[@]}" -d "$WHEELS/torch" --find-links "$WHEELS/common" "$own[bank,generator,encoder,training]" \
      || die "pip download (torch) failed"
    # Debian bookworm's python is 3.11.2, and pip evaluates markers for the running interpreter only:
    # add what a marker on the full version asks for there (redis wants async-timeout below 3.11.3).
    quiet_pip "${dl[@]}" -d "$WHEELS/common" "async-timeout>=4.0.3" || die "pip download (3.11.2 extras) failed"
    rm -f "$WHEELS"/common/gmem_serving-*.whl
    (cd "$WHEELS/common" && for f in *.whl; do rm -f "../torch/$f"; done)
    rm -f "$WHEELS"/torch/gmem_serving-*.whl
    echo "$deps" >"$WHEELS/.deps"
    say "dependencies ready: common $(du -sh "$WHEELS/common" | cut -f1), torch $(du -sh "$WHEELS/torch" | cut -f1)"
  fi
  say "wheelhouse ready in $(( $(date +%s) - t0 )) s"
}

# ------------------------------------------------------------------ images
offline() {
  # Decided once per run: the public base if it is here or can be pulled, else the local one.
  if [ -z "${OFFLINE_DECIDED:-}" ]; then
    case "${OFFLINE:-auto}" in
      1|true|yes) OFFLINE_DECIDED=1 ;;
      0|false|no) OFFLINE_DECIDED=0 ;;
      *) if "$DOCKER" image inspect "$PUBLIC_BASE" >/dev/null 2>&1 \
             || timeout 60 "$DOCKER" pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then OFFLINE_DECIDED=0
         else say "$PUBLIC_BASE cannot be pulled: building on the local base $LOCAL_BASE"; OFFLINE_DECIDED=1; fi ;;
    esac
  fi
  [ "$OFFLINE_DECIDED" = 1 ]
}

# name -> "dockerfile tag [build-arg ...]"
image_spec() {
  case "$1" in
    bank) echo "deploy/Dockerfile.bank gmem/bank:$TAG" ;;
    bank-encoder) echo "deploy/Dockerfile.bank gmem/bank:$TAG-encoder WITH_TORCH=true" ;;
    generator) echo "deploy/Dockerfile.generator-cpu gmem/generator:$TAG-cpu" ;;
    generator-gpu) echo "deploy/Dockerfile.generator gmem/generator:$TAG-cuda" ;;
    train) echo "deploy/Dockerfile.train gmem/train:$TAG-cuda" ;;
    *) die "unknown image $1 (bank bank-encoder generator generator-gpu train)" ;;
  esac
}

images() {
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=(bank bank-encoder generator)
  engine
  local base_args=() base_name=$PUBLIC_BASE
  if offline; then
    base; base_args=(--build-arg "BASE_IMAGE=$LOCAL_BASE"); base_name=$LOCAL_BASE
  fi
  local built=0
  for name in "${names[@]}"; do
    read -r file tag extra <<<"$(image_spec "$name")"
    if [ -z "${REBUILD:-}" ] && "$DOCKER" image inspect "$tag" >/dev/null 2>&1; then continue; fi
    [ $built -eq 1 ] || wheelhouse; built=1
    local args=("${base_args[@]}"); [ -n "${extra:-}" ] && args+=(--build-arg "$extra")
    say "building $tag from $file on $base_name"
    local t0; t0=$(date +%s)
    # No network inside the build: every package comes from wheelhouse/.
    "$DOCKER" build --network none -f "$file" -t "$tag" "${args[@]}" \
      --label "org.opencontainers.image.version=$VERSION" \
      --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" . \
      || die "building $tag failed"
    local size; size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag")
    say "built $tag in $(( $(date +%s) - t0 )) s, $(( size / 1000000 )) MB"
  done
}

# ------------------------------------------------------------------ the stack
ensure_env_file() {
  local f=deploy/bank.env
  [ -f "$f" ] && return 0
  umask 077
  printf '# Made by `make compose-up`: the bank'"'"'s write token (Authorization: Bearer <token>).\nGMEM_BANK_TOKEN=%s\n' \
    "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$f"
  say "created $f with a fresh random GMEM_BANK_TOKEN (read it there; keep it secret)"
}

compose_env() {
  # Image tags for docker-compose.yml; the offline path runs redis from the local base.
  export IMAGE_TAG=$TAG
  if offline; then export REDIS_IMAGE=$LOCAL_BASE; else export REDIS_IMAGE=$REDIS_PUBLIC; fi
}

wait_ready() {
  local name=$1 url=$2 deadline=$(( $(date +%s) + ${READY_TIMEOUT_S:-240} ))
  until curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null \
      || "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=2)" "$url" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      compose logs --tail=40 "$name" >&2 || true
      die "$name not ready at $url/readyz"
    fi
    sleep 1
  done
}

up() {
  ensure_env_file
  images bank-encoder generator
  compose_env
  compose up -d "$@"
  wait_ready bank "$BANK_URL"
  wait_ready generator "$GENERATOR_URL"
  wait_ready playground "$PLAYGROUND_URL"
  say "stack is up: bank $BANK_URL  generator $GENERATOR_URL  playground $PLAYGROUND_URL  (token in deploy/bank.env)"
  echo "bank:       $BANK_URL"
  echo "generator:  $GENERATOR_URL"
  echo "playground: $PLAYGROUND_URL"
}

down() {
  if [ -z "$DOCKER" ] || ! "$DOCKER" info >/dev/null 2>&1; then say "no Docker engine answers: nothing to stop"; return 0; fi
  compose_env
  compose down "$@"
}

cmd=${1:-}; shift || true
case "$cmd" in
  engine) engine ;;
  engine-stop) engine_stop ;;
  base) engine; base ;;
  wheelhouse) wheelhouse ;;
  images) images "$@" ;;
  up) engine; up "$@" ;;
  down) down "$@" ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
