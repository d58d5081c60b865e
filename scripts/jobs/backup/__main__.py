"""`python3 -m jobs.backup serve|now|list` and `bucket OP BUCKET` (see the package docstring)."""

import sys

import jobs.backup


def main(argv: list) -> int:
    if argv[:1] == ["bucket"] and len(argv) == 3:
        from jobs.backup.bucket import bucket_command

        return bucket_command(argv[1], argv[2])
    from jobs.backup import service

    if argv == ["list"]:
        service.list_attempts(service.Config())
        return 0
    if argv == ["now"]:
        cfg = service.Config()
        return 0 if service.run_once(cfg, service.Lock(cfg.root)) else 1
    if argv == ["serve"]:
        return service.serve(service.Config())
    print(jobs.backup.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
