"""The Python loaders and writers of the benchmark (bench/bench.py runs them; not a test).

    pyload.py read N      FILE...   f.read(N) through io.BufferedReader until EOF
    pyload.py readinto N  FILE...   f.readinto(bytearray(N)) until EOF
    pyload.py npy         FILE...   numpy.load(FILE) of each .npy file
    pyload.py write N     FILE      f.write() of N-byte pieces, then flush() and os.fsync()
    pyload.py h5 ORDER    FILE      h5py: dataset "x" read chunk by chunk (ds[i:i+rows]), ORDER
                                    "inorder" or "shuffled" (chunks in a seeded random order)
    pyload.py lmdb N      DIR       lmdb: open the environment read-only, N gets of random keys
    pyload.py mkh5 BYTES  FILE      (data generation, not timed) a chunked uint8 dataset "x" of
                                    256 KiB chunks (4 rows of 64 KiB), about BYTES big
    pyload.py mklmdb BYTES DIR      (data generation, not timed) 1 KiB values under keys %08d
    pyload.py memmap-seq FILE...    numpy.memmap of each file, read in order in 1 MiB slices
    pyload.py memmap-batches N W FILE...  nanoGPT's get_batch: N batches of 16 random 64 KiB
                                    slices, a new numpy.memmap of a file per batch; W > 1: in W
                                    fork workers (multiprocessing), N batches each
    pyload.py safetensors FILE      safetensors.numpy.load_file
    pyload.py mksafetensors BYTES FILE  (data generation, not timed) 16 float32 tensors

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
    if verb in ("h5", "mkh5"):
        import h5py
        import numpy
    if verb in ("lmdb", "mklmdb"):
        import lmdb
    if verb.startswith("memmap") or verb in ("safetensors", "mksafetensors"):
        import numpy
    import random

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
    elif verb == "h5":
        order, path = argv[1], argv[2]
        with h5py.File(path, "r") as f:
            ds = f["x"]
            rows = ds.chunks[0]
            starts = list(range(0, ds.shape[0], rows))
            if order == "shuffled":
                random.Random(5).shuffle(starts)
            for s in starts:
                a = ds[s:s + rows]
                total += a.nbytes
                calls += 1
                if over():
                    break
    elif verb == "lmdb":
        n, path = int(argv[1]), argv[2]
        env = lmdb.open(path, readonly=True, lock=False, subdir=True)
        rng = random.Random(7)
        with env.begin() as txn:
            keys = txn.stat()["entries"]
            for _ in range(n):
                v = txn.get(b"%08d" % rng.randrange(keys))
                total += len(v)
                calls += 1
                if tmax and (calls & 255) == 0 and over():
                    break
        env.close()
    elif verb == "memmap-seq":
        for path in argv[1:]:
            a = numpy.memmap(path, dtype=numpy.uint8, mode="r")
            for i in range(0, a.size, 1 << 20):
                total += len(a[i:i + (1 << 20)].tobytes())
                calls += 1
            del a
            if over():
                break
    elif verb == "memmap-batches":
        n, workers, paths = int(argv[1]), int(argv[2]), argv[3:]
        if workers > 1:
            import multiprocessing as mp
            with mp.get_context("fork").Pool(workers) as pool:
                for b, c in pool.starmap(_batches, [(paths, n, w, tmax) for w in range(workers)]):
                    total += b
                    calls += c
        else:
            total, calls = _batches(paths, n, 0, tmax)
    elif verb == "safetensors":
        from safetensors.numpy import load_file
        for path in argv[1:]:
            for v in load_file(path).values():
                total += v.nbytes
                calls += 1
    elif verb == "mksafetensors":
        from safetensors.numpy import save_file
        want, path = int(argv[1]), argv[2]
        rng = numpy.random.default_rng(3)
        save_file({f"t{i:02d}": rng.standard_normal(want // 4 // 16, dtype=numpy.float32) for i in range(16)}, path)
        _fsync_path(path)
        return
    elif verb == "mkh5":
        want, path = int(argv[1]), argv[2]
        rows = max(4, want // 65536 // 4 * 4)
        block = numpy.frombuffer(bytearray(os.urandom(4 * 65536)), dtype=numpy.uint8).reshape(4, 65536)
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("x", shape=(rows, 65536), dtype=numpy.uint8, chunks=(4, 65536))
            for r in range(0, rows, 4):
                block[0, :8] = numpy.frombuffer(r.to_bytes(8, "little"), dtype=numpy.uint8)
                ds[r:r + 4] = block
        _fsync_path(path)
        return
    elif verb == "mklmdb":
        want, path = int(argv[1]), argv[2]
        n = max(1024, want // 1024)
        env = lmdb.open(path, map_size=4 * want + (64 << 20), subdir=True, sync=True)
        val = os.urandom(1024)
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(b"%08d" % i, val[:1016] + i.to_bytes(8, "little"))
        env.sync(True)
        env.close()
        return
    else:
        sys.exit(f"pyload: unknown verb {verb}")
    print(f"bytes={total} secs={time.monotonic() - t0:.6f} calls={calls}")


def _fsync_path(path):
    """Makes a data file a maker wrote durable, so that dropping its cache leaves it cold."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _batches(paths, n, seed, tmax):
    """nanoGPT's get_batch over `paths` (one file per batch, in turn): (bytes, slices)."""
    import random

    import numpy

    rng = random.Random(seed)
    total = calls = 0
    t0 = time.monotonic()
    for b in range(n):
        data = numpy.memmap(paths[b % len(paths)], dtype=numpy.uint8, mode="r")
        for _ in range(16):
            i = rng.randrange(len(data) - 65536)
            total += len(data[i:i + 65536].tobytes())
            calls += 1
        del data
        if tmax and time.monotonic() - t0 >= tmax:
            break
    return total, calls


if __name__ == "__main__":
    main(sys.argv[1:])
