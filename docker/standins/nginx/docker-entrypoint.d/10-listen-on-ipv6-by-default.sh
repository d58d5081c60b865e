#!/bin/sh
# As the official image: add `listen [::]:80;` to conf.d/default.conf when the host has IPv6 and the
# file is still the shipped one and writable. Mounted or edited configs are left alone.
set -e
ME=$(basename "$0")
CONF=/etc/nginx/conf.d/default.conf
log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$ME: info: $*"; }

[ -f /proc/net/if_inet6 ] || { log "ipv6 not available"; exit 0; }
[ -f "$CONF" ] || { log "$CONF is not a file or does not exist"; exit 0; }
touch "$CONF" 2>/dev/null || { log "can not modify $CONF (read-only file system?)"; exit 0; }
if grep -q 'listen  \[::\]:80;' "$CONF"; then log "IPv6 listen already enabled"; exit 0; fi
cmp -s "$CONF" /usr/share/nginx/default.conf.orig || { log "$CONF differs from the packaged version"; exit 0; }
sed -i -E 's,listen       80;,listen       80;\n    listen  [::]:80;,' "$CONF"
log "Enabled listen on IPv6 in $CONF"
