#!/usr/bin/env bash
# Install what one audience of the bundle needs on Debian 12 (bookworm). Idempotent: installs only
# what is missing, and needs root only when an apt package is missing.
#
#   install.sh [runtime]   what running the stack needs (`up`, `down`, `status`...): python3-venv
#                          and a .venv with requirements-runtime.txt (the Compose binary,
#                          cryptography, PyYAML, requests), constrained to requirements.lock. The
#                          engine itself is Docker where one answers; otherwise `up` installs podman.
#   install.sh tools       + the operator tools' Python (MLflow client, psycopg2, Pulumi...: the
#                          whole lock) for `teams`, `promote`, `backup`, `benchmark`...
#   install.sh test        + the test bench: Chromium (UI test), testssl.sh, nginx-light (Nginx
#                          template tests), iproute2, jq and a Docker CLI (the EC2 boot-script
#                          test), the store plugin in editable mode, and the awscli venv.
#   install.sh docker      Debian's docker.io (dockerd, containerd, runc), and where no Docker
#                          engine answers, dockerd started as a background daemon of ours (no
#                          systemd here): data root $MLFLOW_BUNDLE_DOCKER_ROOT (default
#                          /var/lib/docker), pid and log in var/. `install.sh docker-stop` stops it.
#   install.sh --relock    resolve requirements.txt afresh and write requirements.lock.
set -eEuo pipefail
cd "$(dirname "$0")/../.."

LEVEL=${1:-runtime}
case "$LEVEL" in
    runtime | tools | test | docker | docker-stop | --relock) ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install: unknown level '$LEVEL' (runtime, tools, test, docker, docker-stop or --relock)" >&2; exit 2 ;;
esac

RUNTIME_APT=(python3 python3-venv ca-certificates)
TEST_APT=(chromium testssl.sh nginx-light iproute2 procps git curl util-linux jq)

step() { printf '\n==> %s\n' "$*"; }

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || { echo "install: missing Debian packages (${missing[*]}): run as root once" >&2; exit 2; }
    command -v apt-get >/dev/null || { echo "install: needs a Debian/Ubuntu machine (apt-get)" >&2; exit 2; }
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    # Debian's nginx (and docker.io) services are NOT started: 443/80 are the stack's.
    local policy=/usr/sbin/policy-rc.d had_policy=0
    [[ -e $policy ]] && had_policy=1
    ((had_policy)) || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { ((had_policy)) || rm -f "$policy"; exit 1; }
    ((had_policy)) || rm -f "$policy"
}

DOCKERD_PID=var/run/dockerd.pid
DOCKERD_LOG=var/log/dockerd.log
# The engine on the default socket: DOCKER_HOST may name podman's Docker-API socket.
docker_info() { env -u DOCKER_HOST timeout 20 docker info --format "$1" 2>/dev/null; }
docker_answers() { docker_info '{{.ServerVersion}}' >/dev/null; }

# Poll CHECK (a command) until it succeeds or SECONDS pass; returns 1 on timeout.
wait_for() {
    local seconds=$1 end
    shift
    end=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < end)) || return 1
        sleep 1
    done
}

if [[ $LEVEL == docker ]]; then
    apt_install docker.io iptables
    if docker_answers; then
        step "a Docker engine answers already ($(docker_info '{{.ServerVersion}}'))"
        exit 0
    fi
    mkdir -p var/run var/log
    root=${MLFLOW_BUNDLE_DOCKER_ROOT:-/var/lib/docker}
    step "starting dockerd (data root $root; log in $DOCKERD_LOG)"
    # setsid: the daemon outlives this script and its terminal; its pid file is the one we stop.
    setsid /usr/sbin/dockerd --data-root "$root" --pidfile "$PWD/$DOCKERD_PID" \
        </dev/null >>"$DOCKERD_LOG" 2>&1 &
    if ! wait_for 60 docker_answers; then
        echo "install: dockerd did not answer within 60 s; see $DOCKERD_LOG" >&2
        exit 1
    fi
    step "dockerd $(docker_info '{{.ServerVersion}} ({{.Driver}}, cgroup v{{.CgroupVersion}})') is up"
    exit 0
fi
if [[ $LEVEL == docker-stop ]]; then
    pid=$(cat "$DOCKERD_PID" 2>/dev/null || true)
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        step "no dockerd of ours runs"
        exit 0
    fi
    step "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    # dockerd stops its containers first (their own stop timeouts): give it a while, then kill it.
    wait_for 120 bash -c "! kill -0 $pid 2>/dev/null" || { kill -KILL "$pid"; sleep 1; }
    exit 0
fi

apt_install "${RUNTIME_APT[@]}"
if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv with $(/usr/bin/python3 --version)"
    /usr/bin/python3 -m venv .venv
fi
# The Python source root: scripts/ (ctl, jobs, client) on every interpreter of the venv, and the
# repository root (infra, tests).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$PWD/scripts" "$PWD" > "$site/mlflow-bundle.pth"

pip_install() { .venv/bin/pip install -q --disable-pip-version-check "$@"; }

if [[ $LEVEL == --relock ]]; then
    step "resolving requirements.txt and writing requirements.lock"
    pip_install --upgrade -r requirements.txt
    .venv/bin/pip freeze --exclude-editable | grep -v '^pkg_resources' > requirements.lock
    LEVEL="test"
fi

# .venv/.installed records the highest level installed from which lock; a lower level is a subset.
installed=$(cat .venv/.installed 2>/dev/null || true)
want="$LEVEL $(sha256sum requirements.lock requirements-runtime.txt | sha256sum | cut -c1-16)"
covered() { [[ $installed == "$1 "* && ${installed#* } == "${want#* }" ]]; }
case "$LEVEL" in
    runtime) covered runtime || covered tools || covered test || {
        step "pip install -r requirements-runtime.txt (pinned by requirements.lock)"
        pip_install -r requirements-runtime.txt -c requirements.lock
        echo "$want" > .venv/.installed
    } ;;
    tools | test) covered tools || covered test || {
        step "pip install -r requirements.lock (pinned)"
        pip_install -r requirements.lock
        echo "tools ${want#* }" > .venv/.installed
    } ;;
esac
.venv/bin/pip check >/dev/null || { .venv/bin/pip check; exit 1; }

if [[ $LEVEL == test ]]; then
    apt_install "${TEST_APT[@]}"
    if ! command -v docker >/dev/null; then
        # The real boot-script test drives podman with Docker's CLI: Debian's docker.io for its
        # client only. Its daemon is neither started nor enabled, so the engine stays what it was.
        apt_install docker.io
        command -v systemctl >/dev/null && systemctl --root=/ disable docker.service docker.socket containerd.service
    fi
    if ! .venv/bin/pip show -q mlflow-bundle-store 2>/dev/null; then
        step "pip install -e scripts/store/ (the server's store plugin, for the tests)"
        pip_install --no-deps -e ./scripts/store
    fi
    # The aws CLI the boot-script tests drive (the instance's own tool): a venv of its own, since its
    # botocore pin differs from the lock's. `./mlflowctl` puts it on PATH.
    AWSCLI_VERSION=1.45.11
    if ! .venv-awscli/bin/aws --version 2>&1 | grep -q "^aws-cli/${AWSCLI_VERSION} "; then
        step "pip install awscli==${AWSCLI_VERSION} into .venv-awscli"
        /usr/bin/python3 -m venv .venv-awscli
        .venv-awscli/bin/pip install -q --disable-pip-version-check "awscli==${AWSCLI_VERSION}"
    fi
    echo "test ${want#* }" > .venv/.installed
fi
step "install ($LEVEL) done"
