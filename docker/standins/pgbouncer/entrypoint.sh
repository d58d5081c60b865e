#!/bin/bash
# Entrypoint of the pgbouncer stand-in, same contract as edoburu/pgbouncer's entrypoint.sh:
# - creates the auth file ($AUTH_FILE, default /etc/pgbouncer/userlist.txt) when it is missing;
# - DATABASE_URL or DATABASE_URLS (comma-separated postgres://user:password@host:port/dbname), or
#   DB_USER/DB_PASSWORD/DB_HOST/DB_PORT/DB_NAME: adds "user" "password" to the auth file (md5-hashed
#   unless AUTH_TYPE is plain or scram-sha-256) when the user is not listed yet;
# - when /etc/pgbouncer/pgbouncer.ini does not exist, writes one from those values and from the
#   environment: each PgBouncer setting whose upper-case name is set (POOL_MODE -> pool_mode, ...);
# - then execs the command (default: pgbouncer /etc/pgbouncer/pgbouncer.ini).
set -e

PG_CONFIG_DIR=/etc/pgbouncer
PG_CONFIG_FILE="${PG_CONFIG_DIR}/pgbouncer.ini"
_AUTH_FILE="${AUTH_FILE:-$PG_CONFIG_DIR/userlist.txt}"

[ -e "$_AUTH_FILE" ] || touch "$_AUTH_FILE"

# split_pair VALUE FIRST SECOND: "a:b" sets FIRST=a and SECOND=b; "a" sets FIRST=a and leaves SECOND
split_pair() {
  printf -v "$2" '%s' "${1%%:*}"
  if [[ "$1" == *:* ]]; then printf -v "$3" '%s' "${1#*:}"; fi
}

# proto://user:password@host:port/dbname -> DB_USER, DB_PASSWORD, DB_HOST, DB_PORT, DB_NAME
parse_url() {
  local rest="${1#*://}"
  if [[ "$rest" == *@* ]]; then
    DB_PASSWORD=
    split_pair "${rest%@*}" DB_USER DB_PASSWORD
    rest="${rest##*@}"
  fi
  split_pair "${rest%%/*}" DB_HOST DB_PORT
  if [[ "$rest" == */* ]]; then DB_NAME="${rest#*/}"; else DB_NAME=; fi
}

add_user_if_needed() {
  local pass
  if [ -n "$DB_USER" ] && [ -n "$DB_PASSWORD" ] && [ -e "$_AUTH_FILE" ] && ! grep -q "^\"${DB_USER}\"" "$_AUTH_FILE"; then
    if [ "$AUTH_TYPE" = plain ] || [ "$AUTH_TYPE" = scram-sha-256 ]; then
      pass="$DB_PASSWORD"
    else
      pass="md5$(printf '%s' "${DB_PASSWORD}${DB_USER}" | md5sum | cut -d' ' -f1)"
    fi
    echo "\"${DB_USER}\" \"${pass}\"" >> "$_AUTH_FILE"
    echo "Wrote authentication credentials for '${DB_USER}' to ${_AUTH_FILE}"
  fi
}

db_entry() {
  echo "${DB_NAME:-*} = host=${DB_HOST:?Setup pgbouncer config error! You must set DB_HOST env} port=${DB_PORT:-5432} auth_user=${DB_USER:-postgres}"
  if [ -n "$CLIENT_ENCODING" ]; then echo "client_encoding = ${CLIENT_ENCODING}"; fi
}

for_each_url() {
  local url
  while read -r url; do
    [ -n "$url" ] || continue
    parse_url "$url"
    "$@"
  done <<< "$(tr , '\n' <<< "$DATABASE_URLS")"
}

if [ -n "$DATABASE_URLS" ]; then
  for_each_url add_user_if_needed
else
  if [ -n "$DATABASE_URL" ]; then parse_url "$DATABASE_URL"; fi
  add_user_if_needed
fi

# Settings copied from same-named upper-case variables when set (as the original's template does).
OPTIONAL_SETTINGS="auth_hba_file auth_user auth_query auth_dbname pool_mode max_client_conn pool_size
  default_pool_size min_pool_size reserve_pool_size reserve_pool_timeout max_db_connections
  max_user_connections server_round_robin disable_pqexec application_name_add_host timezone
  max_prepared_statements log_connections log_disconnections log_pooler_errors log_stats stats_period
  verbose stats_users logfile server_reset_query server_reset_query_always server_check_delay
  server_check_query server_lifetime server_idle_timeout server_connect_timeout server_login_retry
  client_login_timeout autodb_idle_timeout dns_max_ttl dns_nxdomain_ttl client_tls_sslmode
  client_tls_key_file client_tls_cert_file client_tls_ca_file client_tls_protocols client_tls_ciphers
  client_tls_ecdhcurve client_tls_dheparams server_tls_sslmode server_tls_ca_file server_tls_key_file
  server_tls_cert_file server_tls_protocols server_tls_ciphers query_timeout query_wait_timeout
  client_idle_timeout idle_transaction_timeout pkt_buf max_packet_size listen_backlog sbuf_loopcnt
  suspend_timeout tcp_defer_accept tcp_keepalive tcp_keepcnt tcp_keepidle tcp_keepintvl tcp_user_timeout"

if [ ! -f "$PG_CONFIG_FILE" ]; then
  echo "Creating pgbouncer config in ${PG_CONFIG_DIR}"
  {
    echo "################## Auto generated ##################"
    echo "[databases]"
    if [ -n "$DATABASE_URLS" ]; then
      for_each_url db_entry
    else
      if [ -n "$DATABASE_URL" ]; then parse_url "$DATABASE_URL"; fi
      db_entry
    fi
    echo "[pgbouncer]"
    echo "listen_addr = ${LISTEN_ADDR:-0.0.0.0}"
    echo "listen_port = ${LISTEN_PORT:-5432}"
    echo "unix_socket_dir = ${UNIX_SOCKET_DIR}"
    echo "user = postgres"
    echo "auth_file = ${_AUTH_FILE}"
    echo "auth_type = ${AUTH_TYPE:-md5}"
    echo "ignore_startup_parameters = ${IGNORE_STARTUP_PARAMETERS:-extra_float_digits}"
    echo "admin_users = ${ADMIN_USERS:-postgres}"
    for key in $OPTIONAL_SETTINGS; do
      var="${key^^}"
      if [ -n "${!var}" ]; then echo "${key} = ${!var}"; fi
    done
    echo "################## end file ##################"
  } > "$PG_CONFIG_FILE"
  cat "$PG_CONFIG_FILE"
fi

echo "Starting $*..."
exec "$@"
