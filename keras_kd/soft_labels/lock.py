"""One build at a time per cache folder: the lock file ``<path>/.lock``.

A folder keras-kd cannot write to (a read-only mount, a shared folder of
another user) cannot hold the lock; :func:`cannot_write` tells that error
from others, so that a complete cache there is still reopened (nobody can
build in such a folder, so there is no build to wait for).
"""

import errno
import os
import socket

try:
    import fcntl
except ImportError:  # Windows: an exclusively created lock file instead
    fcntl = None

LOCK = ".lock"


def cannot_write(error):
    """True when ``error`` (an ``OSError`` from creating the lock file) says
    the folder cannot be written: permission denied or a read-only file
    system.

    Example:

    >>> cannot_write(PermissionError(errno.EACCES, "Permission denied"))
    True
    >>> cannot_write(FileNotFoundError(errno.ENOENT, "No such file"))
    False
    """
    return isinstance(error, PermissionError) or getattr(
        error, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM)


class BuildLock:
    """One build at a time per cache directory: holds ``<path>/.lock``.

    On POSIX the lock is ``fcntl.flock`` on the file, which the operating
    system releases when the process ends, killed or not: a lock file left
    by a killed build is taken over by the next one. The file holds the
    holder's pid and host, for the error a second builder gets. Elsewhere
    (Windows) the file is created exclusively (``O_CREAT | O_EXCL``) and
    removed at the end; one left by a killed build must be deleted by hand,
    as the error says.

    Use as a context manager::

        with BuildLock(path):
            ...  # build the cache at path
    """

    def __init__(self, path):
        self.path = path
        self.file = os.path.join(path, LOCK)
        self._fd = None

    def _refuse(self):
        try:
            with open(self.file, encoding="utf-8") as f:
                holder = f.read().strip() or "unknown"
        except OSError:
            holder = "unknown"
        killed = ("If no build is running (a killed build left it), delete "
                  f"'{self.file}' and rerun." if fcntl is None else
                  "A lock left by a killed build is taken over "
                  "automatically, so this one is held by a running process.")
        raise RuntimeError(
            f"Another process ({holder}) is building the soft-label cache at "
            f"'{self.path}': it holds the lock file '{self.file}'. Wait for "
            "it to finish, then rerun (a finished cache is reopened, an "
            f"interrupted one resumed), or build at another path. {killed}")

    def acquire(self):
        """Takes the lock, or raises RuntimeError naming its holder."""
        stamp = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        if fcntl is None:
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._refuse()
            os.write(fd, stamp)
            self._fd = fd
            return self
        while True:
            fd = os.open(self.file, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._refuse()
            try:  # the file may have been removed by the previous holder
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, stamp)
        self._fd = fd
        return self

    def release(self):
        """Removes the lock file and releases the lock."""
        if self._fd is None:
            return
        try:
            os.remove(self.file)  # before unlocking: no one holds a stale file
        except OSError:
            pass
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
