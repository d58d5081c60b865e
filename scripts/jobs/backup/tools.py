"""What the backup format, the bucket copy and the host CLI share: the errors, log lines, sha256,
psql's argv and one helper that streams a process."""

import datetime
import hashlib
import subprocess
import threading
from pathlib import Path
from typing import IO

TOOL_TIMEOUT = 3600  # seconds for one pg_dump / pg_restore / bucket copy (bounded, generous)
BLOCK = 1 << 20


class BackupError(Exception):
    """A backup or restore step failed; the message says which and why."""


class Interrupted(BackupError):
    """Stopped on request (SIGTERM): the backup stays `.partial`, never counted."""


def log(msg: str):
    print(f"{datetime.datetime.now().strftime('%H:%M:%S')} {msg}", flush=True)


def last_line(text) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text.strip().splitlines() or ["?"])[-1]


def copy_digest(src, dst=None) -> str:
    """sha256 of everything readable from SRC, written on to DST when given."""
    digest = hashlib.sha256()
    for block in iter(lambda: src.read(BLOCK), b""):
        digest.update(block)
        if dst is not None:
            dst.write(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return copy_digest(fh)


def psql_argv(db: str, variables: dict | None = None) -> list:
    """psql: tuples only, unaligned, tab-separated, stop at the first error; VARIABLES are psql
    variables (`:'name'` a quoted literal, `:"name"` a quoted identifier)."""
    argv = ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", db]
    for key, value in (variables or {}).items():
        argv += ["-v", f"{key}={value}"]
    return argv


def pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A Popen pipe that must be there (the process was started with it)."""
    if stream is None:
        raise ValueError("the process was started without this pipe")
    return stream


class Stream:
    """A started process whose stdin/stdout the caller streams. Its stderr is collected by a
    thread (the last line is the error), and it is killed after TIMEOUT seconds at the latest.
    PROC must have been started with stderr=subprocess.PIPE."""

    def __init__(self, proc: subprocess.Popen, timeout: float = TOOL_TIMEOUT):
        self.proc = proc
        self._err: list = []
        stderr = pipe(proc.stderr)
        self._reader = threading.Thread(target=lambda: self._err.append(stderr.read()), daemon=True)
        self._reader.start()
        self._timer = threading.Timer(timeout, proc.kill)
        self._timer.start()

    @property
    def stdin(self) -> IO[bytes]:
        return pipe(self.proc.stdin)

    @property
    def stdout(self) -> IO[bytes]:
        return pipe(self.proc.stdout)

    def error(self) -> str:
        """The last line of its stderr, once it has exited."""
        self._reader.join(60)
        return last_line(self._err[0] if self._err else b"")

    def readline(self, timeout: float) -> bytes:
        """One line of its stdout, or b"" when it exits or says nothing within TIMEOUT."""
        got: list = []
        reader = threading.Thread(target=lambda: got.append(self.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return got[0] if got else b""

    def feed(self, path: Path):
        """Send the file PATH to its stdin, then close it (a process that died stops the feed)."""
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(BLOCK), b""):
                    self.stdin.write(block)
        except OSError:
            pass  # it has exited: finish() says why
        self.close_stdin()

    def close_stdin(self):
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass

    def finish(self, what: str, kill: bool = False, wait: float = TOOL_TIMEOUT):
        """Wait for it (kill it first if KILL); BackupError "WHAT failed: ..." if it failed."""
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        finally:
            self._timer.cancel()
        if self.proc.returncode:
            raise BackupError(f"{what} failed: {self.error()}")
