"""Exclusive file locks (``flock``) that the kernel releases when their holder dies, even by ``kill -9``."""
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional


@contextmanager
def exclusive_lock(path: Path, wait_s: Optional[float] = 0.0) -> Iterator[Optional[IO]]:
    """Yield the open lock file while holding ``flock(path)``, or None when another process holds it.

    ``wait_s``: 0 gives up at once, None waits as long as it takes, a number waits up to that many seconds. The lock
    file holds ``<host>:<pid>`` of the holder. A child process that inherits the yielded file's descriptor
    (``subprocess.run(..., pass_fds=[lock.fileno()])``) holds the lock with it, until the last of them ends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait_s is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield None
                    return
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{this_process()}\n")
        handle.flush()
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def this_process() -> str:
    """``<host>:<pid>`` of this process, as lock files and run tags record their owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def on_this_host(owner: str) -> bool:
    """Whether ``<host>:<pid>`` names a process of this host."""
    return owner.rpartition(":")[0] == socket.gethostname()


def process_alive(owner: str) -> bool:
    """Whether ``<host>:<pid>`` is a live process on this host (this one included; another host: unknown, False)."""
    pid = owner.rpartition(":")[2]
    if not on_this_host(owner) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``: ``<host>:<pid>``, or ``?``."""
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"
