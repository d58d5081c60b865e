"""Backups of the tracking database, the auth database and the artifact bucket: the one
implementation of the backup format. The `backup` service runs it on a schedule into the `backups`
volume; `./mlflowctl backup` runs the same code on the host, with the PostgreSQL tools in the
postgres container and the bucket read by our image (scripts/ctl/backup.py).

  tools.py    what the rest shares: process streams, psql's argv, sha256, errors, log lines
  format.py   one backup: dumps and counts in one snapshot, the bucket's objects, the manifest;
              verification against it; pg_restore of a dump
  bucket.py   the bucket through boto3, and the `bucket OP` command our image runs for mlflowctl
  service.py  the scheduled service: attempts in the volume, retention, the lock, the metrics server

  python3 -m jobs.backup serve   the service: a backup every BACKUP_INTERVAL_SECONDS into BACKUP_DIR,
                                 the newest BACKUP_KEEP kept, gauges on :BACKUP_METRICS_PORT/metrics
  python3 -m jobs.backup now     one backup now (after the one in progress, if any)
  python3 -m jobs.backup list    every backup and failed attempt in BACKUP_DIR, as JSON lines
  python -m jobs.backup bucket OP BUCKET   in our image: state|create|dump|load|sums|remove
"""
