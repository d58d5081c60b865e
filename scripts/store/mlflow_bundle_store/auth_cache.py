"""Caches the basic-auth app's user and grant lookups, so that a request whose password is cached
(`auth_cache_ttl_seconds`) costs no transaction on the auth database.

MLflow 3.17.2 caches the password check only: every request still reads the user
(`sender_is_admin` -> `store.get_user`, a BEGIN/SELECT/COMMIT on the auth database) and, for a
non-admin, the user's grants (`store.list_grants`). Here both answers are kept per worker for the
same TTL as the password, and never served stale where that would refuse something allowed:

- Every auth store write (a new user, password, grant, revocation, admin flag) appends a byte to
  a marker file in the temporary directory, keyed by the auth database. Each request first
  compares the file's size (one `stat`, no database) with the size at this worker's last look; if
  it grew, the worker drops these caches and MLflow's password cache. So a change made through
  one worker holds from the next request on every worker of the container.
- A request the auth app refuses (403) after a cached answer is checked again against the
  database: a grant made through another replica (a rolling upgrade, several ECS tasks) is never
  refused, and there the cache is refreshed.

Cost, as for MLflow's password cache: on ANOTHER replica a changed password, a revoked admin
flag, a deleted user or a revoked permission keeps working for up to `auth_cache_ttl_seconds`.
"""

import functools
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from cachetools import TTLCache
from flask import Flask, g, has_app_context

CACHED = ("get_user", "list_grants")
# Auth store methods that change users, roles or grants: after one, every worker drops its cache.
WRITES = ("create_", "update_", "delete_", "grant_", "revoke_", "add_", "remove_", "set_", "assign_", "unassign_")
HIT, FRESH = "bundle_auth_cache_hit", "bundle_auth_cache_fresh"  # per-request flags in flask.g


def install(auth, app: Flask) -> None:
    """Wrap `auth.store` (MLflow's auth SqlAlchemyStore, after `auth.create_app`) in place, and the
    auth app's before_request in `app`."""
    config = auth.auth_config
    if config.auth_cache_ttl_seconds <= 0:
        return  # the password is not cached either: keep MLflow's behaviour
    database = hashlib.sha256(config.database_uri.encode()).hexdigest()[:16]
    cache = _Cache(
        TTLCache(maxsize=config.auth_cache_max_size, ttl=config.auth_cache_ttl_seconds),
        Path(tempfile.gettempdir()) / f"mlflow-bundle-auth-{database}.generation",
        auth,
    )
    store = auth.store
    for name in CACHED:
        if hasattr(store, name):  # list_grants is new in 3.17: the upgrade test starts 3.16.1 with this app
            setattr(store, name, cache.cached(getattr(store, name), name))
    for name in dir(type(store)):
        if name.startswith(WRITES) and callable(getattr(store, name)):
            setattr(store, name, cache.clearing(getattr(store, name)))
    funcs = app.before_request_funcs[None]
    funcs[funcs.index(auth._before_request)] = _synced(auth._before_request, cache)  # not found: fails at start


class _Cache:
    def __init__(self, entries: TTLCache, marker: Path, auth):
        self.entries, self.marker, self.auth, self.lock = entries, marker, auth, threading.Lock()
        self.marker.touch()
        self.generation = self.marker.stat().st_size

    def sync(self) -> None:
        """Drop what this worker cached if any worker wrote since its last look."""
        try:
            size = self.marker.stat().st_size
        except FileNotFoundError:  # removed (a tmp cleaner): start a new count
            self.marker.touch()
            size = -1
        if size != self.generation:
            self.generation = size
            self.clear()

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
        passwords = getattr(self.auth, "_USER_AUTH_CACHE", None)  # MLflow's password cache (3.17)
        if passwords is not None:
            with self.auth._USER_AUTH_CACHE_LOCK:
                passwords.clear()

    def cached(self, method, name):
        def lookup(*args, **kwargs):
            key = (name, *map(_freeze, args), *sorted((k, _freeze(v)) for k, v in kwargs.items()))
            with self.lock:
                found = None if _flag(FRESH) else self.entries.get(key)
            if found is not None:
                _set_flag(HIT)
                return found
            found = method(*args, **kwargs)  # an exception (unknown user) is not cached
            with self.lock:
                self.entries[key] = found
            return found

        return lookup

    def clearing(self, method):
        def write(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            finally:
                fd = os.open(self.marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, b".")  # one append is atomic: the size only grows
                finally:
                    os.close(fd)
                self.clear()

        return write


def _synced(before_request, cache: _Cache):
    @functools.wraps(before_request)
    def check():
        cache.sync()
        response = before_request()
        if response is not None and response.status_code == 403 and _flag(HIT):
            _set_flag(FRESH)
            response = before_request()
        return response

    return check


def _flag(name: str) -> bool:
    return has_app_context() and g.get(name, False)


def _set_flag(name: str) -> None:
    if has_app_context():
        setattr(g, name, True)


def _freeze(value):
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return tuple(value) if isinstance(value, list | tuple) else value
