"""Page-cache sampling for the mapped-file tests: cachestat(2) of files, every few ms, from a
thread of the test process (which never loads the library), while a program runs."""

import ctypes
import os
import threading
import time

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_CACHESTAT = 451


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def cachestat(fd: int) -> int:
    """Bytes of the file behind fd in the page cache."""
    r, st = _Range(0, 0), _Stat()
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(r), ctypes.byref(st), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return st.cache * os.sysconf("SC_PAGESIZE")


class Sampler:
    """with Sampler(paths) as s: ... -> s.peak (bytes: the largest sum over the files at one
    sample), s.samples (how many). Files that do not exist yet are picked up when they appear."""

    def __init__(self, paths, interval=0.002):
        self.paths = [str(p) for p in paths]
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.series = []
        self._stop = threading.Event()
        self._fds = {}

    def _sample(self):
        total = 0
        for p in self.paths:
            fd = self._fds.get(p)
            if fd is None:
                try:
                    fd = self._fds[p] = os.open(p, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            total += cachestat(fd)
        self.peak = max(self.peak, total)
        self.samples += 1
        self.series.append(total)

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._sample()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        for fd in self._fds.values():
            os.close(fd)
        return False
