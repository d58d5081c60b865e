#!/bin/sh
# Entrypoint of the nginx stand-in, same contract as the official image's: for `nginx ...` (or
# `nginx-debug ...`) run /docker-entrypoint.d/ in version order (executable *.envsh are sourced,
# executable *.sh are run, anything else is ignored), then exec the command.
# NGINX_ENTRYPOINT_QUIET_LOGS=1 silences these messages.
set -e

entrypoint_log() {
    [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$@"
}

if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    if find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -type f -print -quit 2>/dev/null | grep -q .; then
        entrypoint_log "$0: /docker-entrypoint.d/ is not empty, will attempt to perform configuration"
        # A here-document instead of a pipe: sourced *.envsh files then change this shell's environment.
        files=$(find /docker-entrypoint.d/ -follow -type f -print | sort -V)
        while read -r f; do
            [ -n "$f" ] || continue
            case "$f" in
                *.envsh)
                    if [ -x "$f" ]; then entrypoint_log "$0: Sourcing $f"; . "$f"
                    else entrypoint_log "$0: Ignoring $f, not executable"; fi ;;
                *.sh)
                    if [ -x "$f" ]; then entrypoint_log "$0: Launching $f"; "$f"
                    else entrypoint_log "$0: Ignoring $f, not executable"; fi ;;
                *) entrypoint_log "$0: Ignoring $f" ;;
            esac
        done <<EOT
$files
EOT
        entrypoint_log "$0: Configuration complete; ready for start up"
    else
        entrypoint_log "$0: No files found in /docker-entrypoint.d/, skipping configuration"
    fi
fi

# Stand-in only: the official binary is built with --user=nginx --group=nginx, Debian's without, so
# a main config with no `user` directive would run the workers as nobody instead of nginx (101).
# Supply that compiled-in default through -g when the master runs as root and the config has none.
if [ "$(id -u)" = 0 ] && { [ "$1" = nginx ] || [ "$1" = nginx-debug ]; }; then
    conf=/etc/nginx/nginx.conf
    globals=
    prev=
    for arg in "$@"; do
        case "$prev" in
            -c) conf="$arg" ;;
            -g) globals="$arg" ;;
        esac
        prev="$arg"
    done
    case "$conf" in /*) ;; *) conf="/etc/nginx/$conf" ;; esac
    if [ -r "$conf" ] && ! grep -Eq '^[[:space:]]*user[[:space:]]' "$conf" \
        && ! printf '%s' "$globals" | grep -Eq '(^|;)[[:space:]]*user[[:space:]]'; then
        cmd="$1"
        shift
        prev=
        found=
        for arg in "$@"; do
            shift
            if [ "$prev" = -g ]; then
                arg="$arg user nginx nginx;"
                found=1
            fi
            set -- "$@" "$arg"
            prev="$arg"
        done
        [ -n "$found" ] || set -- -g 'user nginx nginx;' "$@"
        set -- "$cmd" "$@"
    fi
fi

exec "$@"
