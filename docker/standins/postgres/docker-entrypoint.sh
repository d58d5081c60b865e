#!/usr/bin/env bash
# Entrypoint of the postgres stand-in. Same contract as the official image's docker-entrypoint.sh:
#   POSTGRES_PASSWORD, POSTGRES_USER (default postgres), POSTGRES_DB (default $POSTGRES_USER),
#   POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD, the *_FILE variants,
#   PGDATA, and /docker-entrypoint-initdb.d/ (*.sh, *.sql, *.sql.gz, *.sql.xz, *.sql.zst).
# Started as root with `postgres ...`: fix PGDATA ownership/mode, re-exec as postgres (gosu).
# Empty PGDATA: initdb with the password, a `host all all all <password_encryption>` hba line,
# a socket-only temporary server for POSTGRES_DB and the init files, then exec the real server.
set -Eeo pipefail

# VAR or VAR_FILE (Docker secrets), never both.
file_env() {
	local var="$1" def="${2:-}" file_var="${1}_FILE" val
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		echo >&2 "error: both $var and $file_var are set (but are exclusive)"
		exit 1
	fi
	val="$def"
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!file_var:-}" ]; then
		val="$(< "${!file_var}")"
	fi
	export "$var"="$val"
	unset "$file_var"
}

setup_env() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=}"
	DATABASE_ALREADY_EXISTS=
	if [ -s "$PGDATA/PG_VERSION" ]; then
		DATABASE_ALREADY_EXISTS=true
	fi
}

# Directories; as root also hand them to postgres (allows `--user` and foreign-owned volumes).
create_dirs() {
	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA" || :
	mkdir -p /var/run/postgresql || :
	chmod 03775 /var/run/postgresql || :
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		[ "$(id -u)" != 0 ] || find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres '{}' +
		chmod 0700 "$POSTGRES_INITDB_WALDIR"
	fi
	if [ "$(id -u)" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
	fi
}

check_env() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOE'
			Error: Database is uninitialized and superuser password is not specified.
			       Set POSTGRES_PASSWORD to a non-empty value (or POSTGRES_HOST_AUTH_METHOD=trust,
			       which is not recommended).
		EOE
		exit 1
	fi
	if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		echo >&2 'WARNING: POSTGRES_HOST_AUTH_METHOD=trust: any client that reaches the port gets in without a password.'
	fi
}

init_db_dir() {
	# initdb insists that the current uid has a passwd entry: fake one for arbitrary `--user` uids.
	local uid wrapper
	uid="$(id -u)"
	if ! getent passwd "$uid" > /dev/null; then
		for wrapper in {/usr,}/lib{/*,}/libnss_wrapper.so; do
			if [ -s "$wrapper" ]; then
				NSS_WRAPPER_PASSWD="$(mktemp)"
				NSS_WRAPPER_GROUP="$(mktemp)"
				export LD_PRELOAD="$wrapper" NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
				printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$uid" "$(id -g)" "$PGDATA" > "$NSS_WRAPPER_PASSWD"
				printf 'postgres:x:%s:\n' "$(id -g)" > "$NSS_WRAPPER_GROUP"
				break
			fi
		done
	fi
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		set -- --waldir "$POSTGRES_INITDB_WALDIR" "$@"
	fi
	# POSTGRES_INITDB_ARGS is word-split like a shell command line (upstream uses eval too).
	# The trailing "\n" keeps --pwfile from refusing an empty password file.
	eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"$POSTGRES_INITDB_ARGS"' "$@"'
	if [[ "${LD_PRELOAD:-}" == */libnss_wrapper.so ]]; then
		rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
		unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
	fi
}

# Remote clients authenticate with the configured password_encryption (scram-sha-256 by default).
setup_hba() {
	[ "$1" != postgres ] || shift
	local auth
	auth="$(postgres -C password_encryption "$@")"
	: "${POSTGRES_HOST_AUTH_METHOD:=$auth}"
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
}

docker_process_sql() {
	local cmd=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	[ -z "$POSTGRES_DB" ] || cmd+=(--dbname "$POSTGRES_DB")
	PGHOST= PGHOSTADDR= "${cmd[@]}" "$@"
}

temp_server_start() {
	[ "$1" != postgres ] || shift
	set -- "$@" -c listen_addresses='' -p "${PGPORT:-5432}"
	NOTIFY_SOCKET= PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
}

temp_server_stop() {
	PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

create_db() {
	local exists
	exists="$(POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<-'EOSQL'
		SELECT 1 FROM pg_database WHERE datname = :'db';
	EOSQL
	)"
	if [ -z "$exists" ]; then
		POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db";
		EOSQL
	fi
}

process_init_files() {
	local f
	psql=(docker_process_sql)   # init scripts written for the official image call these names
	for f; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
			*.sql)     echo "$0: running $f"; docker_process_sql -f "$f" ;;
			*.sql.gz)  echo "$0: running $f"; gunzip -c "$f" | docker_process_sql ;;
			*.sql.xz)  echo "$0: running $f"; xzcat "$f" | docker_process_sql ;;
			*.sql.zst) echo "$0: running $f"; zstd -dc "$f" | docker_process_sql ;;
			*)         echo "$0: ignoring $f" ;;
		esac
	done
}

# Flags that make postgres print something and exit: no initialization for those.
wants_help() {
	local arg
	for arg; do
		case "$arg" in -'?'|--help|--describe-config|-V|--version) return 0 ;; esac
	done
	return 1
}

main() {
	# `docker run IMAGE -c foo=bar` means `postgres -c foo=bar`.
	if [ "${1:0:1}" = - ]; then
		set -- postgres "$@"
	fi
	if [ "$1" = postgres ] && ! wants_help "$@"; then
		setup_env
		create_dirs
		if [ "$(id -u)" = 0 ]; then
			exec gosu postgres "$BASH_SOURCE" "$@"
		fi
		if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
			check_env
			ls /docker-entrypoint-initdb.d/ > /dev/null   # fail before initdb if unreadable
			init_db_dir
			setup_hba "$@"
			export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
			temp_server_start "$@"
			create_db
			process_init_files /docker-entrypoint-initdb.d/*
			temp_server_stop
			unset PGPASSWORD
			echo 'PostgreSQL init process complete; ready for start up.'
		else
			echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
		fi
	fi
	exec "$@"
}

main "$@"
