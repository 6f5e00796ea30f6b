"""s3dlio-direct for Python: run a program with its file I/O bypassing the page cache
(O_DIRECT) without changing the program, and read the library's counters from inside it.

The package carries the preload library (``libs3dlio_direct.so``) and the
``s3dlio-direct`` command; ``pip install`` puts the command on the environment's PATH::

    s3dlio-direct run --paths /data --stats /tmp/st -- python train.py
    python -m s3dlio_direct run --paths /data -- python train.py      # the same

From inside a program started that way (or with ``LD_PRELOAD`` set by hand)::

    import s3dlio_direct
    if s3dlio_direct.active():
        counters = s3dlio_direct.stats()       # e.g. counters["read_bytes"]

Importing this package never loads the library into the process: only ``LD_PRELOAD``
does, before the program starts.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence

__all__ = ["__version__", "active", "command_path", "library_path", "main", "stats"]

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
_LIBRARY = "libs3dlio_direct.so"
_COMMAND = "s3dlio-direct"


def _packaged(name: str) -> Path:
    path = _HERE / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this s3dlio_direct package was not installed from a wheel "
            "(`make wheel`, then `pip install dist/s3dlio_direct-*.whl`, or `pip install .` "
            "in the source tree)"
        )
    return path


def library_path() -> Path:
    """The preload library inside this package, ``.../s3dlio_direct/libs3dlio_direct.so``.

    This is the file to put in ``LD_PRELOAD`` when composing the environment by hand (an
    MPI launcher's ``-x LD_PRELOAD=...``, a container). ``LD_PRELOAD`` splits at spaces and
    colons, so for an installation under a path with either, use ``s3dlio-direct run``,
    which names the library through a link at a plain path.

    Raises:
        FileNotFoundError: the package holds no library (a source checkout, not an
            installed wheel).
    """
    return _packaged(_LIBRARY)


def command_path() -> Path:
    """The ``s3dlio-direct`` executable inside this package (the command on PATH is a small
    wrapper that runs it).

    Raises:
        FileNotFoundError: the package holds no command (a source checkout).
    """
    return _packaged(_COMMAND)


def _loaded() -> Optional[ctypes.CDLL]:
    """The process's global symbol scope if the library is loaded into it, else None."""
    try:
        scope = ctypes.CDLL(None)
    except OSError:
        return None
    try:
        scope.s3dlio_direct_active
        scope.s3dlio_direct_stats_json
    except AttributeError:
        return None
    return scope


def active() -> bool:
    """Whether the library is loaded into this process and manages files in it.

    True when the process was started with the library preloaded (``s3dlio-direct run``, or
    ``LD_PRELOAD``), ``S3DLIO_DIRECT_PATHS`` names something, and, if
    ``S3DLIO_DIRECT_PROGRAMS`` is set, this program is one of those. False otherwise,
    including in a setuid program, where the library stands down.
    """
    scope = _loaded()
    if scope is None:
        return False
    fn = scope.s3dlio_direct_active
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return bool(fn())


def stats() -> Optional[Dict[str, Any]]:
    """This process's counters so far, read from the loaded library, as a dict.

    The keys are those of the statistics file the library writes at exit
    (``S3DLIO_DIRECT_STATS``): ``pid``, ``program``, one integer per counter
    (``opens_direct``, ``read_bytes``, ``read_bounced_bytes``, ``write_bytes``, ...) and
    ``fallbacks``, a dict from reason to count. They count this process only (a fork child
    starts from zero), so a training loop can log them, e.g. to TensorBoard::

        c = s3dlio_direct.stats()
        if c:
            writer.add_scalar("io/read_bytes", c["read_bytes"], step)

    Returns:
        The counters, or None when the library is not loaded into this process.
    """
    scope = _loaded()
    if scope is None:
        return None
    fn = scope.s3dlio_direct_stats_json
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(size)
        n = fn(buf, size)
        if n == 0:
            return None
        if n < size:
            doc: Dict[str, Any] = json.loads(buf.raw[:n].decode("utf-8", "replace"))
            return doc
        size = n + 1


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Runs the ``s3dlio-direct`` command in place of this Python process (``exec``), with
    ``argv`` (default: this process's arguments). The command finds the library beside
    itself in this package; its exit status and signals are those of the command.
    """
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        exe = command_path()
    except FileNotFoundError as e:
        sys.stderr.write(f"s3dlio-direct: error: {e}\n")
        raise SystemExit(125) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [_COMMAND, *args])
