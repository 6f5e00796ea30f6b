/* records: self-describing records written by several processes through one description.
 *
 * A record is a 32-byte header and a payload, written with one write(2):
 *   magic "REC!" | id (u32) | length of the whole record (u32) | 0 (u32)
 *   | FNV-1a 64 of the payload | FNV-1a 64 of the header's first 24 bytes
 * and the payload is the data stream gen_byte(id, 0..) of common.h. Record k of writer w has
 * id (w << 16) | k and a size drawn from the PRNG seeded with (seed, id): 60% from 32 to
 * 4096 bytes, 25% up to 256 KiB, 15% up to MAX; record 1 of every writer is MAX bytes.
 *
 *   records plan W COUNT SEED MAX         prints "<id> <length>" of writer W's records
 *   records emit W COUNT SEED MAX [FD]    writes writer W's records to FD (default 1)
 *   records fork PATH NCHILD COUNT SEED MAX [append]
 *        opens PATH (O_WRONLY|O_CREAT|O_TRUNC, with O_APPEND if asked), writes record 0 of
 *        writer 0, forks NCHILD children that write writers 1..NCHILD's records through the
 *        inherited descriptor, waits for them, then writes record 1 of writer 0. Prints
 *        "child <w> status=<n>" and "parent ok" on stdout (the statuses are 0 when every
 *        write wrote its whole record).
 *   records check PATH                    reads PATH and prints "rec <id> <length> <offset>"
 *        for every whole record in file order, "bad <offset> <reason>" where the bytes are not
 *        a whole record (then looks for the next header), and "end <size> <records> <bad>".
 * Exit status 1 on a failed or short write (after "error ..." on stderr), 2 on usage.
 */
#include "common.h"
#include <sys/wait.h>

#define HDR 32

static uint32_t rec_size(uint64_t seed, uint32_t id, long long max)
{
    rng_t r = {seed * 0x9e3779b97f4a7c15ULL ^ id};
    if ((id & 0xffff) == 1) return (uint32_t)max;
    uint64_t p = rng_below(&r, 100);
    long long lo = HDR, hi;
    if (p < 60) hi = 4096;
    else if (p < 85) { lo = 4097; hi = 262144; }
    else { lo = 262145; hi = max; }
    if (hi > max) hi = max;
    if (lo > hi) lo = hi;
    return (uint32_t)(lo + (long long)rng_below(&r, (uint64_t)(hi - lo + 1)));
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* builds record id (len bytes) in buf; buf is misaligned by the caller on purpose */
static void build(unsigned char *buf, uint32_t id, uint32_t len)
{
    gen_fill(id, 0, buf + HDR, len - HDR);
    memcpy(buf, "REC!", 4);
    put32(buf + 4, id);
    put32(buf + 8, len);
    put32(buf + 12, 0);
    put64(buf + 16, fnv1a(FNV_INIT, buf + HDR, len - HDR));
    put64(buf + 24, fnv1a(FNV_INIT, buf, 24));
}

static int write_record(int fd, unsigned char *buf, uint32_t id, uint32_t len)
{
    build(buf, id, len);
    ssize_t w;
    do {
        w = write(fd, buf, len);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)len) {
        fprintf(stderr, "error write id=%u len=%u got=%zd %s\n", id, len, w, errname(errno));
        return -1;
    }
    return 0;
}

static int emit(int w, int count, uint64_t seed, long long max, int fd)
{
    unsigned char *buf = xalloc((size_t)max + HDR, 5);
    for (int k = 0; k < count; k++) {
        uint32_t id = ((uint32_t)w << 16) | (uint32_t)k;
        if (write_record(fd, buf, id, rec_size(seed, id, max))) return 1;
    }
    return 0;
}

static int check(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) { fprintf(stderr, "error open %s\n", errname(errno)); return 1; }
    struct stat st;
    fstat(fd, &st);
    size_t size = (size_t)st.st_size;
    unsigned char *d = malloc(size + 1);
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, d + got, size - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    size = got;
    long long recs = 0, bad = 0;
    size_t off = 0;
    while (off < size) {
        const char *why = NULL;
        uint32_t id = 0, len = 0;
        if (size - off < HDR) why = "truncated-header";
        else if (memcmp(d + off, "REC!", 4)) why = "no-magic";
        else if (get64(d + off + 24) != fnv1a(FNV_INIT, d + off, 24)) why = "header-checksum";
        else {
            id = get32(d + off + 4);
            len = get32(d + off + 8);
            if (len < HDR || len > size - off) why = "truncated-record";
            else if (get64(d + off + 16) != fnv1a(FNV_INIT, d + off + HDR, len - HDR)) why = "payload-checksum";
        }
        if (!why) {
            printf("rec %u %u %zu\n", id, len, off);
            recs++;
            off += len;
            continue;
        }
        printf("bad %zu %s\n", off, why);
        bad++;
        /* resynchronise at the next header that checks out */
        size_t next = off + 1;
        for (; next + HDR <= size; next++)
            if (!memcmp(d + next, "REC!", 4) && get64(d + next + 24) == fnv1a(FNV_INIT, d + next, 24)) break;
        off = next + HDR <= size ? next : size;
    }
    printf("end %zu %lld %lld\n", size, recs, bad);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 6 && !strcmp(argv[1], "plan")) {
        int w = atoi(argv[2]), count = atoi(argv[3]);
        uint64_t seed = strtoull(argv[4], NULL, 0);
        long long max = strtoll(argv[5], NULL, 0);
        for (int k = 0; k < count; k++) {
            uint32_t id = ((uint32_t)w << 16) | (uint32_t)k;
            printf("%u %u\n", id, rec_size(seed, id, max));
        }
        return 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "emit")) {
        int fd = argc >= 7 ? atoi(argv[6]) : 1;
        return emit(atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], NULL, 0), strtoll(argv[5], NULL, 0), fd);
    }
    if (argc >= 7 && !strcmp(argv[1], "fork")) {
        const char *path = argv[2];
        int nchild = atoi(argv[3]), count = atoi(argv[4]);
        uint64_t seed = strtoull(argv[5], NULL, 0);
        long long max = strtoll(argv[6], NULL, 0);
        int flags = O_WRONLY | O_CREAT | O_TRUNC;
        if (argc >= 8 && !strcmp(argv[7], "append")) flags |= O_APPEND;
        int fd = open(path, flags, 0644);
        if (fd < 0) { fprintf(stderr, "error open %s\n", errname(errno)); return 1; }
        unsigned char *buf = xalloc((size_t)max + HDR, 7);
        if (write_record(fd, buf, 0, rec_size(seed, 0, max))) return 1;
        fflush(stdout);
        pid_t pids[64];
        for (int c = 0; c < nchild && c < 64; c++) {
            pids[c] = fork();
            if (pids[c] < 0) die("fork");
            if (pids[c] == 0) _exit(emit(c + 1, count, seed, max, fd));
        }
        int rc = 0;
        for (int c = 0; c < nchild && c < 64; c++) {
            int st = 0;
            waitpid(pids[c], &st, 0);
            printf("child %d status=%d\n", c + 1, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            if (!WIFEXITED(st) || WEXITSTATUS(st)) rc = 1;
        }
        if (write_record(fd, buf, 1, rec_size(seed, 1, max))) return 1;
        if (close(fd) < 0) { fprintf(stderr, "error close %s\n", errname(errno)); return 1; }
        printf("parent ok\n");
        return rc;
    }
    if (argc >= 3 && !strcmp(argv[1], "check")) return check(argv[2]);
    fprintf(stderr, "usage: records plan|emit W COUNT SEED MAX [FD] | fork PATH NCHILD COUNT SEED MAX [append] | check PATH\n");
    return 2;
}
