#!/bin/sh
# As the official image: render $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX
# (default /etc/nginx/templates/*.template) into $NGINX_ENVSUBST_OUTPUT_DIR (default conf.d) with
# envsubst, substituting only variables defined in the environment (NGINX_ENVSUBST_FILTER: a regex
# on their names). Stream templates (*.stream-template) are not implemented in the stand-in.
set -e
ME=$(basename "$0")
log() { [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$ME: $*"; }

template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
filter="${NGINX_ENVSUBST_FILTER:-}"

[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
    log "ERROR: $template_dir exists, but $output_dir is not writable"
    exit 0
fi
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" < /dev/null))
find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
    relative="${template#"$template_dir/"}"
    out="$output_dir/${relative%"$suffix"}"
    mkdir -p "$(dirname "$out")"
    log "Running envsubst on $template to $out"
    envsubst "$defined_envs" < "$template" > "$out"
done
