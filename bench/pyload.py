"""The Python loaders and writers of the benchmark (bench/bench.py runs them; not a test).

    pyload.py read N      FILE...   f.read(N) through io.BufferedReader until EOF
    pyload.py readinto N  FILE...   f.readinto(bytearray(N)) until EOF
    pyload.py npy         FILE...   numpy.load(FILE) of each .npy file
    pyload.py write N     FILE      f.write() of N-byte pieces, then flush() and os.fsync()

Options before the verb: -T SECS (stop after SECS), -L BYTES (stop after BYTES; for write
the size written). Prints "bytes=<n> secs=<elapsed I/O time> calls=<calls>".
"""

import os
import sys
import time


def main(argv):
    tmax, lmax = 0.0, 0
    while argv and argv[0] in ("-T", "-L"):
        if argv[0] == "-T":
            tmax = float(argv[1])
        else:
            lmax = int(argv[1])
        argv = argv[2:]
    verb = argv[0]
    if verb == "npy":
        import numpy  # imported before the clock starts

    total = calls = 0
    t0 = time.monotonic()

    def over():
        return (lmax and total >= lmax) or (tmax and time.monotonic() - t0 >= tmax)

    if verb == "read":
        n = int(argv[1])
        for path in argv[2:]:
            with open(path, "rb") as f:
                while True:
                    b = f.read(n)
                    calls += 1
                    if not b:
                        break
                    total += len(b)
                    if over():
                        break
            if over():
                break
    elif verb == "readinto":
        n = int(argv[1])
        buf = bytearray(n)
        for path in argv[2:]:
            with open(path, "rb") as f:
                while True:
                    k = f.readinto(buf)
                    calls += 1
                    if not k:
                        break
                    total += k
                    if over():
                        break
            if over():
                break
    elif verb == "npy":
        for path in argv[1:]:
            a = numpy.load(path)
            calls += 1
            total += os.path.getsize(path)
            del a
            if over():
                break
    elif verb == "write":
        n, path = int(argv[1]), argv[2]
        want = lmax or (1 << 30)
        piece = os.urandom(n)
        with open(path, "wb") as f:
            while total < want:
                k = min(n, want - total)
                f.write(piece if k == n else piece[:k])
                total += k
                calls += 1
                if tmax and (calls & 63) == 0 and time.monotonic() - t0 >= tmax:
                    break
            f.flush()
            os.fsync(f.fileno())
    else:
        sys.exit(f"pyload: unknown verb {verb}")
    print(f"bytes={total} secs={time.monotonic() - t0:.6f} calls={calls}")


if __name__ == "__main__":
    main(sys.argv[1:])
