"""Loaders that read their data through mmap, as ML jobs do (tests/test_mapped.py runs each
plainly and under the library and compares what it prints: a hash of everything it read).

    maploaders.py make KIND PATH SIZE     writes a data set of about SIZE bytes
    maploaders.py KIND PATH [ARGS]        reads it and prints one line
KIND: memmap-seq, memmap-batches, memmap-pool, safetensors, arrow, parquet, lmdb, csv;
also lmdb-writer/lmdb-reader (a writer committing beside a reader)."""

import hashlib
import os
import sys

import numpy as np

BLOCK, BATCH = 1024, 12


def digest(h):
    print(h.hexdigest(), flush=True)


def make(kind, path, size):
    rng = np.random.default_rng(7)
    if kind.startswith("memmap"):
        rng.integers(0, 65535, size // 2, dtype=np.uint16).tofile(path)
    elif kind == "safetensors":
        from safetensors.numpy import save_file
        n = 16
        save_file({f"t{i:02d}": rng.standard_normal(size // 4 // n, dtype=np.float32) for i in range(n)}, path)
    elif kind in ("arrow", "parquet"):
        import pyarrow as pa
        rows = size // 16
        t = pa.table({"a": rng.integers(0, 1 << 60, rows), "b": rng.standard_normal(rows)})
        if kind == "arrow":
            import pyarrow.feather as feather
            feather.write_feather(t, path, compression="uncompressed")
        else:
            import pyarrow.parquet as pq
            pq.write_table(t, path, compression="none")
    elif kind == "lmdb":
        import lmdb
        env = lmdb.open(path, map_size=size * 3, subdir=True)
        n = size // 4096
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(b"k%08d" % i, rng.bytes(3000))
        env.close()
    elif kind == "csv":
        rows = size // 40
        with open(path, "w") as f:
            f.write("a,b,c\n")
            for a, b, c in zip(rng.integers(0, 1 << 40, rows), rng.integers(0, 1000, rows), rng.standard_normal(rows)):
                f.write(f"{a},{b},{c:.6f}\n")
    else:
        raise SystemExit(f"unknown kind {kind}")


def batches(path, seed, n):
    h = hashlib.sha256()
    rng = np.random.default_rng(seed)
    for _ in range(n):
        # nanoGPT's get_batch: a new memmap for every batch
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = rng.integers(len(data) - BLOCK, size=BATCH)
        x = np.stack([data[i:i + BLOCK].astype(np.int64) for i in ix])
        h.update(x.tobytes())
        del data
    return h.hexdigest()


def _pool_worker(args):
    return batches(*args)


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    kind, path = sys.argv[1], sys.argv[2]
    h = hashlib.sha256()
    if kind == "memmap-seq":
        a = np.memmap(path, dtype=np.uint8, mode="r")
        for i in range(0, a.size, 1 << 20):
            h.update(a[i:i + (1 << 20)].tobytes())
    elif kind == "memmap-batches":
        h.update(batches(path, 1, int(sys.argv[3])).encode())
    elif kind == "memmap-pool":
        import multiprocessing as mp
        n = int(sys.argv[3])
        with mp.get_context("fork").Pool(4) as pool:
            for r in pool.map(_pool_worker, [(path, s, n) for s in range(4)]):
                h.update(r.encode())
    elif kind == "safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file
        with safe_open(path, framework="numpy") as f:
            for k in sorted(f.keys()):
                h.update(f.get_tensor(k).tobytes())
        for k, v in sorted(load_file(path).items()):
            h.update(k.encode() + v.tobytes())
    elif kind == "arrow":
        import pyarrow as pa
        import pyarrow.feather as feather
        t = feather.read_table(path, memory_map=True)
        for c in t.columns:
            for chunk in c.chunks:
                for b in chunk.buffers():
                    if b is not None:
                        h.update(memoryview(b))
    elif kind == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(path, memory_map=True)
        h.update(str(t.column("a").to_pylist()[::97]).encode())
        h.update(np.asarray(t.column("b")).tobytes())
    elif kind == "lmdb":
        import lmdb
        env = lmdb.open(path, readonly=True, lock=False, subdir=True)
        rng = np.random.default_rng(3)
        with env.begin() as txn:
            n = txn.stat()["entries"]
            for i in rng.integers(0, n, int(sys.argv[3])):
                h.update(txn.get(b"k%08d" % i))
        env.close()
    elif kind == "lmdb-writer":
        import lmdb
        env = lmdb.open(path, map_size=256 << 20, subdir=True, writemap=True)
        rng = np.random.default_rng(5)
        for t in range(int(sys.argv[3])):
            with env.begin(write=True) as txn:
                for i in rng.integers(0, 2000, 50):
                    txn.put(b"w%06d" % i, (b"%06d:%06d;" % (i, t)) * 200)
        env.close()
        env = lmdb.open(path, readonly=True, subdir=True)
        with env.begin() as txn:
            for k, v in txn.cursor():
                h.update(k + v)
    elif kind == "lmdb-reader":
        # reads beside the writer: every value must be whole (one commit's), whatever commit
        import lmdb
        env = lmdb.open(path, readonly=True, subdir=True)
        bad = seen = 0
        rng = np.random.default_rng(6)
        for _ in range(int(sys.argv[3])):
            with env.begin() as txn:
                for i in rng.integers(0, 2000, 50):
                    v = txn.get(b"w%06d" % i)
                    if v is not None:
                        seen += 1
                        bad += v != v[:14] * 200 or not v.startswith(b"%06d:" % i)
        print(f"reader: {bad} torn values", flush=True)
        return
    elif kind == "csv":
        import pandas as pd
        df = pd.read_csv(path, memory_map=True)
        h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    else:
        raise SystemExit(f"unknown kind {kind}")
    digest(h)


if __name__ == "__main__":
    main()
