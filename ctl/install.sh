#!/usr/bin/env bash
# Install what the bundle's tools and tests need on Debian 12 (bookworm), as root. Idempotent.
#   apt: Chromium (UI test), testssl.sh, nginx-light (Nginx template tests), iproute2, procps, git,
#        curl, Python venv, jq (the EC2 boot script). Debian's nginx service is NOT started
#        (policy-rc.d): 443/80 are the stack's. Where no `docker` command exists, Debian's docker.io
#        for its CLI only (the real boot-script test drives podman with it): its daemon is neither
#        started nor enabled, so the engine stays what it was.
#   pip: .venv from requirements.lock (every package pinned), including the Compose binary
# The container engine is Docker where one runs; otherwise `./mlflowctl up` installs podman.
set -eEuo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium testssl.sh nginx-light iproute2 procps git python3 python3-venv curl ca-certificates util-linux jq)

step() { printf '\n==> %s\n' "$*"; }

[[ $EUID -eq 0 ]] || { echo "install: run as root (apt-get, system users)" >&2; exit 2; }
command -v apt-get >/dev/null || { echo "install: needs a Debian/Ubuntu machine (apt-get)" >&2; exit 2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
docker_cli_only=0
command -v docker >/dev/null || { missing+=(docker.io); docker_cli_only=1; }
if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    policy=/usr/sbin/policy-rc.d
    had_policy=0; [[ -e $policy ]] && had_policy=1
    ((had_policy)) || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; }
    trap '((had_policy)) || rm -f /usr/sbin/policy-rc.d' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    if ((docker_cli_only)) && command -v systemctl >/dev/null; then
        # docker.io's postinst enabled its daemon for the next boot; --root: works without systemd too.
        systemctl --root=/ disable docker.service docker.socket containerd.service
    fi
else
    step "apt packages present"
fi

if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv with $(/usr/bin/python3 --version)"
    /usr/bin/python3 -m venv .venv
fi
if [[ "${1:-}" == --relock ]]; then
    step "resolving requirements.txt and writing requirements.lock"
    .venv/bin/pip install -q --upgrade -r requirements.txt
    .venv/bin/pip freeze --exclude-editable | grep -v '^pkg_resources' > requirements.lock
elif ! cmp -s requirements.lock .venv/.installed-lock 2>/dev/null; then
    step "pip install -r requirements.lock (pinned)"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
fi
if ! .venv/bin/pip show -q mlflow-bundle-store 2>/dev/null; then
    step "pip install -e store/ (the server's store plugin, for the tests)"
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e ./store
fi
.venv/bin/pip check >/dev/null || { .venv/bin/pip check; exit 1; }
# The aws CLI the boot-script tests drive (the instance's own tool): a venv of its own, since its
# botocore pin differs from the lock's. `./mlflowctl` puts it on PATH.
AWSCLI_VERSION=1.45.11
if ! .venv-awscli/bin/aws --version 2>&1 | grep -q "^aws-cli/${AWSCLI_VERSION} "; then
    step "pip install awscli==${AWSCLI_VERSION} into .venv-awscli"
    /usr/bin/python3 -m venv .venv-awscli
    .venv-awscli/bin/pip install -q --disable-pip-version-check "awscli==${AWSCLI_VERSION}"
fi
cp requirements.lock .venv/.installed-lock
step "install done"
