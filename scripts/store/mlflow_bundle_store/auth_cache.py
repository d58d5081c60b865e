"""Caches the basic-auth app's user and grant lookups, so that a request whose password is cached
(`auth_cache_ttl_seconds`) costs no transaction on the auth database.

MLflow 3.17.2 caches the password check only: every request still reads the user
(`sender_is_admin` -> `store.get_user`, a BEGIN/SELECT/COMMIT on the auth database) and, for a
non-admin, the user's grants (`store.list_grants`). Here both answers are kept per worker for the
same TTL as the password. Cost, as for the password: another worker keeps a revoked admin flag,
a deleted user or a revoked permission working for up to `auth_cache_ttl_seconds`. The worker
that served the change forgets everything it cached at once (every store write clears it).
"""

import threading

from cachetools import TTLCache

CACHED = ("get_user", "list_grants")
# Auth store methods that change users, roles or grants: after one, this worker's cache is dropped.
WRITES = ("create_", "update_", "delete_", "grant_", "revoke_", "add_", "remove_", "set_", "assign_", "unassign_")


def install(auth) -> None:
    """Wrap `auth.store` (MLflow's auth SqlAlchemyStore, after `auth.create_app`) in place."""
    config = auth.auth_config
    if config.auth_cache_ttl_seconds <= 0:
        return  # the password is not cached either: keep MLflow's behaviour
    cache, lock = TTLCache(maxsize=config.auth_cache_max_size, ttl=config.auth_cache_ttl_seconds), threading.Lock()

    def clear():
        with lock:
            cache.clear()

    store = auth.store
    for name in CACHED:
        if hasattr(store, name):  # list_grants is new in 3.17: the upgrade test starts 3.16.1 with this app
            setattr(store, name, _cached(getattr(store, name), name, cache, lock))
    for name in dir(type(store)):
        if name.startswith(WRITES) and callable(getattr(store, name)):
            setattr(store, name, _clearing(getattr(store, name), clear))


def _freeze(value):
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return tuple(value) if isinstance(value, list | tuple) else value


def _cached(method, name, cache, lock):
    def lookup(*args, **kwargs):
        key = (name, *map(_freeze, args), *sorted((k, _freeze(v)) for k, v in kwargs.items()))
        with lock:
            found = cache.get(key)
        if found is None:
            found = method(*args, **kwargs)  # an exception (unknown user) is not cached
            with lock:
                cache[key] = found
        return found

    return lookup


def _clearing(method, clear):
    def write(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        finally:
            clear()

    return write
