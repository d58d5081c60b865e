#!/usr/bin/env bash
# Contract checks for the offline stand-in images (docker/standins/README.md), run with $ENGINE or,
# with ENGINE=docker, Docker (the images of that engine).
# Creates its own network and containers (prefix standin-check-) and removes them on exit.
# Traffic stays on that network or 127.0.0.1 inside the containers.
#   docker/standins/check.sh                  # all checks
#   CHECK_PIP=1 docker/standins/check.sh      # also a derived build that pip-installs from PyPI
#                                             # ($ENGINE only: it mounts the host CA; see README)
# Image tags: PYTHON_IMAGE, POSTGRES_IMAGE, PGBOUNCER_IMAGE, NGINX_IMAGE, S3_IMAGE.
set -Eeuo pipefail

# Tags not set in the environment come from var/images.env, which `./mlflowctl up` writes.
images_env="$(cd "$(dirname "$0")/../.." && pwd)/var/images.env"
if [[ -f $images_env ]]; then
    while IFS='=' read -r key value; do
        [[ $key == *_IMAGE && -z ${!key:-} ]] && export "$key=$value"
    done < <(grep -v '^#' "$images_env")
fi
: "${PYTHON_IMAGE:?}" "${POSTGRES_IMAGE:?}" "${PGBOUNCER_IMAGE:?}" "${NGINX_IMAGE:?}" "${S3_IMAGE:?}"
CA=/etc/ssl/certs/ca-certificates.crt
ENGINE=${ENGINE:-podman}

P=standin-check-$$
NET=$P-net
TMP="$(mktemp -d)"
CONTAINERS=()
failures=0

cleanup() {
	local c
	for c in "${CONTAINERS[@]}"; do $ENGINE rm -f -v "$c" > /dev/null 2>&1 || :; done
	$ENGINE network rm "$NET" > /dev/null 2>&1 || :
	$ENGINE rmi "localhost/$P-derived" > /dev/null 2>&1 || :
	rm -rf "$TMP"
}
trap cleanup EXIT

ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION EXPECTED ACTUAL
	if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected [$2], got [$3]"; fi
}
run() { $ENGINE run --rm "$@"; }
start() { # start NAME ARGS...: detached container on the check network
	local name="$P-$1"; shift
	CONTAINERS+=("$name")
	$ENGINE run -d --name "$name" --network "$NET" "$@" > /dev/null
}
wait_for() { # wait_for SECONDS COMMAND...
	local n="$1"; shift
	for _ in $(seq "$n"); do "$@" > /dev/null 2>&1 && return 0; sleep 1; done
	return 1
}

$ENGINE network create "$NET" > /dev/null

echo "== python ($PYTHON_IMAGE)"
check "python: uid" "0:0" "$(run "$PYTHON_IMAGE" sh -c 'echo $(id -u):$(id -g)')"
check "python: /usr/local/bin first" "/usr/local/bin/python /usr/local/bin/pip C.UTF-8" \
	"$(run "$PYTHON_IMAGE" sh -c 'echo $(command -v python) $(command -v pip) $LANG')"
check "python: 3.13" "3.13" "$(run "$PYTHON_IMAGE" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
check "python: CMD" "[python3]" "$($ENGINE image inspect "$PYTHON_IMAGE" --format '{{.Config.Cmd}}')"
if [ "${CHECK_PIP:-}" = 1 ]; then
	printf 'ARG BASE\nFROM ${BASE}\nRUN pip install --no-cache-dir psycopg2-binary==2.9.13 && python -c "import psycopg2; print(psycopg2.__version__)"\n' > "$TMP/Containerfile"
	if podman build -q -v "$CA:$CA:ro" --build-arg BASE="$PYTHON_IMAGE" -t "localhost/$P-derived" "$TMP" > /dev/null; then
		ok "python: derived build pip-installs psycopg2-binary==2.9.13"
	else
		bad "python: derived build pip install"
	fi
fi

echo "== postgres ($POSTGRES_IMAGE)"
check "postgres: uid/gid of postgres" "999:999" "$(run "$POSTGRES_IMAGE" sh -c 'echo $(id -u postgres):$(id -g postgres)')"
check "postgres: tools" "ok" "$(run "$POSTGRES_IMAGE" sh -c 'for t in pg_isready psql pg_dump pg_restore initdb postgres gosu; do command -v $t > /dev/null || exit 1; done; echo ok')"
check "postgres: STOPSIGNAL" "SIGINT" "$($ENGINE image inspect "$POSTGRES_IMAGE" --format '{{.Config.StopSignal}}')"
start pg -e POSTGRES_PASSWORD='pw with space' -e POSTGRES_DB=appdb "$POSTGRES_IMAGE"
if wait_for 60 $ENGINE exec "$P-pg" pg_isready -h 127.0.0.1 -U postgres -d postgres; then ok "postgres: initdb + pg_isready"; else bad "postgres: pg_isready"; fi
check "postgres: PID 1 runs as 999" "999" "$($ENGINE exec "$P-pg" awk '/^Uid/ {print $2}' /proc/1/status)"
check "postgres: scram login over TCP" "postgres|appdb|SCRAM" "$(run --network "$NET" -e PGPASSWORD='pw with space' "$POSTGRES_IMAGE" \
	psql -h "$P-pg" -U postgres -d appdb -tAc "select current_user, current_database(), left(rolpassword, 5) from pg_authid where rolname = 'postgres'")"
check "postgres: wrong password refused" "refused" "$(run --network "$NET" -e PGPASSWORD=wrong "$POSTGRES_IMAGE" \
	psql -h "$P-pg" -U postgres -tAc 'select 1' > /dev/null 2>&1 && echo accepted || echo refused)"
$ENGINE exec -u postgres "$P-pg" psql -qc "create role app login password 'apppw'" -c "create database app owner app" > /dev/null

echo "== pgbouncer ($PGBOUNCER_IMAGE)"
check "pgbouncer: uid/gid" "uid=70(postgres) gid=70(postgres)" "$(run --entrypoint id "$PGBOUNCER_IMAGE" | cut -d' ' -f1-2)"
check "pgbouncer: USER" "postgres" "$($ENGINE image inspect "$PGBOUNCER_IMAGE" --format '{{.Config.User}}')"
mkdir -p "$TMP/pgb"
printf '[databases]\napp = host=%s port=5432 dbname=app\n[pgbouncer]\nlisten_addr = *\nlisten_port = 6432\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = userlist.txt\npool_mode = transaction\nignore_startup_parameters = extra_float_digits,options\nlogfile =\npidfile =\n' "$P-pg" > "$TMP/pgb/pgbouncer.ini"
echo '"app" "apppw"' > "$TMP/pgb/userlist.txt"
chmod 0755 "$TMP/pgb"; chmod 0600 "$TMP/pgb"/*; chown -R 70:70 "$TMP/pgb"
start pgb --entrypoint pgbouncer -w /etc/pgbouncer -v "$TMP/pgb:/etc/pgbouncer:ro" -e PGPASSWORD=apppw "$PGBOUNCER_IMAGE" /etc/pgbouncer/pgbouncer.ini
if wait_for 30 $ENGINE exec "$P-pgb" psql -h 127.0.0.1 -p 6432 -U app -d app -tAc 'select 1'; then
	ok "pgbouncer: compose-style start, psql through PgBouncer to PostgreSQL"
else
	bad "pgbouncer: psql through PgBouncer"; $ENGINE logs "$P-pgb" 2>&1 | tail -5
fi
start pgb2 -e DATABASE_URL="postgres://app:apppw@$P-pg:5432/app" -e AUTH_TYPE=scram-sha-256 -e LISTEN_PORT=6432 -e PGPASSWORD=apppw "$PGBOUNCER_IMAGE"
if wait_for 30 $ENGINE exec "$P-pgb2" psql -h 127.0.0.1 -p 6432 -U app -d app -tAc 'select 1'; then
	ok "pgbouncer: default entrypoint generates its config from DATABASE_URL"
else
	bad "pgbouncer: DATABASE_URL start"; $ENGINE logs "$P-pgb2" 2>&1 | tail -5
fi

echo "== nginx ($NGINX_IMAGE)"
check "nginx: uid/gid of nginx" "101:101" "$(run --entrypoint sh "$NGINX_IMAGE" -c 'echo $(id -u nginx):$(id -g nginx)')"
check "nginx: STOPSIGNAL" "SIGQUIT" "$($ENGINE image inspect "$NGINX_IMAGE" --format '{{.Config.StopSignal}}')"
check "nginx: stock default.conf" "listen 80; server_name localhost;" \
	"$(run --entrypoint sh "$NGINX_IMAGE" -c "grep -E '^\s*(listen|server_name)\s' /etc/nginx/conf.d/default.conf | tr -s ' ' | sed 's/^ //' | tr '\n' ' ' | sed 's/ \$//'")"
check "nginx: no Debian sites-enabled" "absent" "$(run --entrypoint sh "$NGINX_IMAGE" -c '[ -e /etc/nginx/sites-enabled ] && echo present || echo absent')"
check "nginx: logs to stdout/stderr" "/dev/stdout /dev/stderr" "$(run --entrypoint sh "$NGINX_IMAGE" -c 'echo $(readlink /var/log/nginx/access.log) $(readlink /var/log/nginx/error.log)')"
mkdir -p "$TMP/nginx/conf.d" "$TMP/nginx/certs"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/nginx/certs/server.key" -out "$TMP/nginx/certs/server.crt" \
	-days 1 -subj /CN=standin.test -addext subjectAltName=DNS:standin.test > /dev/null 2>&1
cat > "$TMP/nginx/conf.d/test.conf" <<'EOF'
limit_req_zone $binary_remote_addr zone=z:1m rate=10r/m;
server {
    listen 443 ssl default_server;
    server_name standin.test;
    ssl_certificate certs/server.crt;
    ssl_certificate_key certs/server.key;
    location = /raw { default_type application/json; return 200 '{"enabled":true}'; }
    location = /sub {
        limit_req zone=z burst=20 nodelay;
        proxy_pass https://127.0.0.1/raw;
        proxy_ssl_verify off;
        sub_filter_types application/json;
        sub_filter '"enabled":true' '"enabled":false';
    }
}
EOF
# The bundle's main config has no `user` directive: the workers must still run as nginx (101).
run --entrypoint cat "$NGINX_IMAGE" /etc/nginx/nginx.conf | grep -v '^user' > "$TMP/nginx/nginx.conf"
chmod -R a+rX "$TMP/nginx"
NGINX_MOUNTS=(-v "$TMP/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" -v "$TMP/nginx/conf.d:/etc/nginx/conf.d:ro" -v "$TMP/nginx/certs:/etc/nginx/certs:ro")
if run "${NGINX_MOUNTS[@]}" "$NGINX_IMAGE" nginx -t > /dev/null 2>&1; then ok "nginx: -t with ssl, sub_filter, limit_req"; else bad "nginx: -t"; fi
start nginx "${NGINX_MOUNTS[@]}" "$NGINX_IMAGE" nginx -g 'daemon off;'
check "nginx: sub_filter over TLS (curl)" '{"enabled":false}' "$(wait_for 10 $ENGINE exec "$P-nginx" curl -fsS -k https://127.0.0.1/raw; \
	$ENGINE exec "$P-nginx" curl -fsS --cacert /etc/nginx/certs/server.crt --resolve standin.test:443:127.0.0.1 https://standin.test/sub)"
check "nginx: workers run as 101 (main config without user)" "101" "$($ENGINE exec "$P-nginx" sh -c 'for p in /proc/[0-9]*; do case "$(tr "\0" " " < $p/cmdline)" in "nginx: worker"*) awk "/^Uid/ {print \$2}" $p/status;; esac; done | sort -u')"
start nginx2 "$NGINX_IMAGE"
check "nginx: stock image serves on :80" "200" "$(wait_for 10 run --network "$NET" --entrypoint curl "$NGINX_IMAGE" -fsS "http://$P-nginx2/"; \
	run --network "$NET" --entrypoint curl "$NGINX_IMAGE" -sS -o /dev/null -w '%{http_code}' "http://$P-nginx2/")"

echo "== s3 ($S3_IMAGE)"
check "s3: runs as root" "0" "$(run --entrypoint id "$S3_IMAGE" -u)"
mkdir -p "$TMP/s3cfg"; echo '{"identities": []}' > "$TMP/s3cfg/s3.json"; chmod -R a+rX "$TMP/s3cfg"
start s3 -v "$TMP/s3cfg:/etc/seaweedfs:ro" "$S3_IMAGE" server -dir=/data -s3 -s3.port=8333 -s3.config=/etc/seaweedfs/s3.json
if wait_for 30 $ENGINE exec "$P-s3" wget -q -O /dev/null http://127.0.0.1:8333/healthz; then ok "s3: wget /healthz"; else bad "s3: /healthz"; fi
cat > "$TMP/s3test.py" <<'EOF'
import hashlib, io, os, sys
import boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="any", aws_secret_access_key="thing")
s3.create_bucket(Bucket="check")
data = os.urandom(20 * 1024 * 1024)
cfg = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20)
s3.upload_fileobj(io.BytesIO(data), "check", "big.bin", Config=cfg)
etag = s3.head_object(Bucket="check", Key="big.bin")["ETag"]
out = io.BytesIO()
s3.download_fileobj("check", "big.bin", out, Config=cfg)
same = hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="check")["Contents"]]
print("multipart" if "-" in etag else "single", same, keys)
EOF
chmod a+r "$TMP/s3test.py"
check "s3: boto3 bucket, 20 MiB multipart put/get, list" "multipart True ['big.bin']" \
	"$(run --network "$NET" -v "$TMP/s3test.py:/s3test.py:ro" --entrypoint python "$S3_IMAGE" /s3test.py "http://$P-s3:8333")"
$ENGINE restart -t 5 "$P-s3" > /dev/null
wait_for 30 $ENGINE exec "$P-s3" wget -q -O /dev/null http://127.0.0.1:8333/healthz || :
check "s3: objects are NOT kept across a restart (documented)" "[]" "$(run --network "$NET" --entrypoint python "$S3_IMAGE" -c \
	"import boto3; print([b['Name'] for b in boto3.client('s3', endpoint_url='http://$P-s3:8333', region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b').list_buckets()['Buckets']])")"

echo
if [ "$failures" = 0 ]; then echo "all stand-in checks passed"; else echo "$failures check(s) failed"; exit 1; fi
