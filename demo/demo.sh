#!/usr/bin/env bash
# make demo: generate a data set, stream it with a real loader (python3) plainly and under
# libs3dlio_direct.so, and show the proof from the kernel: identical output, O_DIRECT on
# the library's twins of the loader's files (the loader's own descriptors untouched), and the
# page cache left untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
SO="$PWD/target/release/libs3dlio_direct.so"
[ -f "$SO" ] || { echo "demo: $SO is missing; run 'make build'" >&2; exit 1; }
DATA="${DEMO_DATA:-$PWD/demo-data}"
FILES="${DEMO_FILES:-24}"
mkdir -p "$DATA"

echo "== generating $FILES files of odd sizes in $DATA"
python3 - "$DATA" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    p = os.path.join(root, f"shard-{i:03d}.bin")
    size = rng.randrange(1 << 20, 12 << 20) + rng.randrange(1, 4096)
    if not os.path.exists(p) or os.path.getsize(p) != size:
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))
PY

evict() {  # drop the data set from the page cache without root: fsync + DONTNEED
    python3 - "$DATA" <<'PY'
import os, sys
for name in os.listdir(sys.argv[1]):
    fd = os.open(os.path.join(sys.argv[1], name), os.O_RDONLY)
    os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
PY
}
cached() {  # bytes of the data set in the page cache, from the kernel (mincore via fincore)
    fincore --bytes --noheadings --raw -o RES "$DATA"/* | awk '{s+=$1} END {print s+0}'
}
total=$(du -cb "$DATA"/* | tail -1 | cut -f1)

echo "== plain run (page cache)"
evict
plain=$(python3 demo/loader.py "$DATA")
echo "   $plain; cached afterwards: $(cached) of $total bytes"

echo "== under the shim (S3DLIO_DIRECT_PATHS=$DATA)"
evict
STATS=$(mktemp -d)
shim=$(LD_PRELOAD="$SO" S3DLIO_DIRECT_PATHS="$DATA" S3DLIO_DIRECT_STATS="$STATS/stats-%p.json" \
    python3 demo/loader.py "$DATA")
echo "   $shim; cached afterwards: $(cached) of $total bytes"

echo "== O_DIRECT as the kernel reports it (/proc/PID/fdinfo of an open data file and of its twin)"
LD_PRELOAD="$SO" S3DLIO_DIRECT_PATHS="$DATA" python3 -c '
import os, sys
def flags(fd):
    return [l for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("flags")][0].split()[1]
f = open(sys.argv[1], "rb")
me = os.fstat(f.fileno())
print(f"   the program'"'"'s fd {f.fileno()}: flags {flags(f.fileno())} (exactly what it opened)")
for n in sorted(int(x) for x in os.listdir("/proc/self/fd")):
    try:
        st = os.fstat(n)
    except OSError:
        continue
    if n != f.fileno() and (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
        fl = flags(n)
        print(f"   the library'"'"'s twin, fd {n}: flags {fl}: O_DIRECT (040000) is", "set" if int(fl, 8) & 0o40000 else "NOT set")
' "$(ls "$DATA"/* | head -1)"

echo "== the shim's statistics"
python3 - "$STATS" <<'PY'
import glob, json, sys
for p in sorted(glob.glob(sys.argv[1] + "/stats-*.json")):
    s = json.load(open(p))
    if s["opens_matched"]:
        keys = ["opens_direct", "read_calls", "read_bytes", "read_bounced_calls", "read_bounced_bytes"]
        print(f"   {s['program']} (pid {s['pid']}): " + ", ".join(f"{k}={s[k]}" for k in keys))
        print(f"   fallbacks: {s['fallbacks']}")
PY
rm -rf "$STATS"

if [ "$plain" = "$shim" ]; then echo "== identical output: yes"; else echo "== OUTPUT DIFFERS" >&2; exit 1; fi
