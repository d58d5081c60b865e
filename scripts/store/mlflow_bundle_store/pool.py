"""No pre-ping round trip on the tracking engines (the auth engines keep it: app.py).

MLflow creates every engine with `pool_pre_ping=True` (mlflow/store/db/utils.py
create_sqlalchemy_engine): a `SELECT 1` round trip at every connection checkout, i.e. at every
request, per database. The bundle's engines talk to PgBouncer, which already re-checks a server
connection idle for `server_check_delay` seconds (`server_check_query`) and drops the ones
PostgreSQL closed, so the ping only tests the hop to PgBouncer. A request that meets a dead
connection (PgBouncer itself restarted) fails with a disconnect error: the app answers it with a
JSON 503 (retryable, nothing acknowledged), and SQLAlchemy invalidates the pool's older
connections, so the next request reconnects.
"""


def without_pre_ping(*engines) -> None:
    for engine in engines:
        if engine is not None:
            engine.pool._pre_ping = False  # SQLAlchemy's Pool(pre_ping=...) flag, set by create_engine
