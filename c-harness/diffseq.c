/* diffseq SEED PATH [N]
 *
 * Differential workload: a seeded (own PRNG) random sequence of N (default 300) calls on
 * PATH (created if missing): open/open64/openat/openat64/creat/creat64 with varied flags,
 * read/pread/pread64/readv/preadv/preadv64/preadv2/preadv64v2 (flags 0),
 * write/pwrite/pwrite64/writev/pwritev/pwritev64/pwritev2/pwritev64v2 (flags 0),
 * lseek/lseek64 (SET/CUR/END, beyond EOF, negative), ftruncate/ftruncate64 (grow/shrink),
 * fsync/fdatasync, dup/dup2/dup3/fcntl(F_DUPFD, F_DUPFD_CLOEXEC), fcntl F_GETFL/F_SETFL,
 * fstat, close, plus genuine errors (negative offsets, reads on O_WRONLY, writes on
 * O_RDONLY, bad fds). Buffers are misaligned by 0..4095 bytes, lengths 0..3*65536.
 *
 * One line per call: "<n> <call> = <ret> [<errno>] [h=<fnv of bytes read>] pos=<offset>".
 * With HARNESS_FDINFO set, each successful open also prints its kernel flags on stderr
 * ("FDINFO <call>(<flags>) fd=<n> flags:\t<octal>").
 * A read that changed the caller's buffer beyond the count it returned prints
 * "CLOBBER step=<n> ret=<r>" on stderr.
 * Descriptors are printed as slots (s0..s7), never as numbers, because the shim may hold
 * descriptors of its own. The last line is "final size=<bytes> fnv=<hash>".
 * The output must be identical with and without the shim (same initial file content).
 * Built also with -D_FORTIFY_SOURCE=2 (diffseq_fortify, diffseq_fortify64) so that
 * __open_2/__open64_2/__openat_2/__openat64_2 are reached (the two-argument opens with
 * variable flags); loader -m sread/spread (fortified) reaches __read_chk/__pread_chk/
 * __pread64_chk.
 */
#include "common.h"
#include <libgen.h>
#include <sys/uio.h>

#define NSLOT 8
#define MAXLEN (3 * 65536)
#define BADFD 1000000

static int slot_fd[NSLOT];
static rng_t R;
static const char *path;
static char dirbuf[4096], basebuf[4096];
static unsigned long stream_off; /* position in the data stream used for writes */
static uint64_t data_seed;
static int cur_step;
/* A static buffer of known size: with _FORTIFY_SOURCE, read/pread into it go through
 * __read_chk/__pread_chk/__pread64_chk. */
static char sbuf[MAXLEN + 8192] __attribute__((aligned(4096)));

static void out_ret(long long ret, int err)
{
    if (ret < 0) printf(" = %lld %s", ret, errname(err));
    else printf(" = %lld", ret);
}
static void out_pos(int fd)
{
    errno = 0;
    off_t p = lseek(fd, 0, SEEK_CUR);
    if (p < 0) printf(" pos=- %s\n", errname(errno));
    else printf(" pos=%lld\n", (long long)p);
}

static long long cur_size(void)
{
    struct stat st;
    if (stat(path, &st) < 0) return 0;
    return st.st_size;
}

static int pick_slot(void)
{
    int open_slots[NSLOT], n = 0;
    for (int i = 0; i < NSLOT; i++)
        if (slot_fd[i] >= 0) open_slots[n++] = i;
    if (!n) return -1;
    return open_slots[rng_below(&R, n)];
}
static int free_slot(void)
{
    for (int i = 0; i < NSLOT; i++)
        if (slot_fd[i] < 0) return i;
    return -1;
}

static size_t pick_len(void)
{
    switch (rng_below(&R, 10)) {
    case 0: return rng_below(&R, 65);
    case 1: case 2: return 4096 * (1 + rng_below(&R, 48));
    case 3: return 512 * (1 + rng_below(&R, 64));
    case 4: return 65536 * (1 + rng_below(&R, 3));
    default: {
        size_t l = rng_below(&R, MAXLEN + 1);
        if (rng_pct(&R, 50)) l |= 1;
        return l > MAXLEN ? MAXLEN : l;
    }
    }
}
static size_t pick_mis(void)
{
    switch (rng_below(&R, 10)) {
    case 0: case 1: case 2: return 0;
    case 3: return 512 * rng_below(&R, 8);
    default: return rng_below(&R, 4096);
    }
}
static long long pick_off(void)
{
    long long sz = cur_size();
    switch (rng_below(&R, 20)) {
    case 0: case 1: case 2: case 3: case 4: return 4096 * (long long)rng_below(&R, sz / 4096 + 3);
    case 5: case 6: case 7: case 8: return (long long)rng_below(&R, sz + 100);
    case 9: case 10: case 11: { long long o = sz - (long long)rng_below(&R, 5000); return o < 0 ? 0 : o; }
    case 12: case 13: return sz + 1 + (long long)rng_below(&R, 100000);
    case 14: case 15: return (long long)rng_below(&R, 10000);
    case 16: case 17: return 512 * (long long)rng_below(&R, sz / 512 + 3);
    case 18: return sz;
    default: return rng_pct(&R, 50) ? -1 : -4096;
    }
}

/* ---- buffers for one call ---- */
struct bufs { int n; struct iovec iov[4]; void *base[4]; int use_static; };
static void bufs_make(struct bufs *b, int niov, int for_write, int allow_static)
{
    b->n = niov;
    b->use_static = allow_static && niov == 1 && rng_pct(&R, 25);
    int aligned = rng_pct(&R, 25); /* everything aligned: the straight-to-kernel path */
    for (int i = 0; i < niov; i++) {
        size_t len = niov == 1 ? pick_len() : (aligned ? 4096 * rng_below(&R, 8) : rng_below(&R, 40000));
        size_t mis = aligned ? 0 : pick_mis();
        if (aligned && niov == 1) len = 4096 * (1 + rng_below(&R, 48));
        if (b->use_static) {
            static volatile size_t cap = sizeof sbuf; /* opaque: keeps __read_chk */
            if (len + mis > cap) len = cap - mis;
            b->base[i] = NULL;
            b->iov[i].iov_base = sbuf + mis;
        } else {
            b->base[i] = xalloc(len, mis);
            b->iov[i].iov_base = b->base[i];
        }
        b->iov[i].iov_len = len;
        if (for_write) {
            gen_fill(data_seed, stream_off, b->iov[i].iov_base, len);
            stream_off += len;
        } else {
            memset(b->iov[i].iov_base, 0xA5, len);
        }
    }
}
static void bufs_free(struct bufs *b)
{
    for (int i = 0; i < b->n; i++)
        if (b->base[i]) free((char *)b->base[i] - ((uintptr_t)b->base[i] & 4095));
}
static void print_bufs(struct bufs *b)
{
    for (int i = 0; i < b->n; i++)
        printf("%s[+%lu,%zu]", i ? "," : "", (unsigned long)((uintptr_t)b->iov[i].iov_base & 4095), b->iov[i].iov_len);
}
static void print_readhash(struct bufs *b, long long ret)
{
    if (ret <= 0) return;
    uint64_t h = FNV_INIT;
    long long left = ret;
    for (int i = 0; i < b->n && left > 0; i++) {
        size_t take = b->iov[i].iov_len < (size_t)left ? b->iov[i].iov_len : (size_t)left;
        h = fnv1a(h, b->iov[i].iov_base, take);
        left -= (long long)take;
    }
    /* bytes past the returned count must be untouched */
    int clobbered = 0;
    left = ret;
    for (int i = 0; i < b->n; i++) {
        size_t start = left >= (long long)b->iov[i].iov_len ? b->iov[i].iov_len : (size_t)(left > 0 ? left : 0);
        for (size_t k = start; k < b->iov[i].iov_len; k++)
            if (((unsigned char *)b->iov[i].iov_base)[k] != 0xA5) { clobbered = 1; break; }
        left -= (long long)b->iov[i].iov_len;
    }
    printf(" h=%016llx", (unsigned long long)h);
    /* on stderr, so that the main comparison goes on; the test compares these lines too */
    if (clobbered) fprintf(stderr, "CLOBBER step=%d ret=%lld\n", cur_step, ret);
}

static int target_fd(int s, const char **label)
{
    if (s < 0 || rng_pct(&R, 3)) { *label = rng_pct(&R, 50) ? "bad" : "neg"; return **label == 'b' ? BADFD : -1; }
    static char l[16];
    snprintf(l, sizeof l, "s%d", s);
    *label = l;
    return slot_fd[s];
}

static void flagstr(int flags, char *out, size_t n)
{
    static const char *accn[4] = {"RDONLY", "WRONLY", "RDWR", "ACC3"};
    snprintf(out, n, "%s", accn[flags & O_ACCMODE]);
    struct { int f; const char *s; } t[] = {
        {O_APPEND, "|APPEND"}, {O_TRUNC, "|TRUNC"}, {O_CREAT, "|CREAT"}, {O_CLOEXEC, "|CLOEXEC"},
        {O_DSYNC, "|DSYNC"}, {O_SYNC & ~O_DSYNC, "|SYNC"}, {O_DIRECT, "|DIRECT"}, {O_NONBLOCK, "|NONBLOCK"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (flags & t[i].f) strncat(out, t[i].s, n - strlen(out) - 1);
}

static void do_open(int step)
{
    int s = free_slot();
    if (s < 0) { /* close one first */
        int c = pick_slot();
        errno = 0;
        int r = close(slot_fd[c]);
        printf("%d close(s%d)", step, c);
        out_ret(r, errno);
        printf("\n");
        slot_fd[c] = -1;
        s = c;
    }
    static const int accs[3] = {O_RDONLY, O_WRONLY, O_RDWR};
    static const char *accn[3] = {"RDONLY", "WRONLY", "RDWR"};
    int a = rng_pct(&R, 50) ? 2 : (int)rng_below(&R, 2);
    int flags = accs[a];
    char fl[128];
    snprintf(fl, sizeof fl, "%s", accn[a]);
    if (rng_pct(&R, 20)) { flags |= O_APPEND; strcat(fl, "|APPEND"); }
    if (rng_pct(&R, 3)) { flags |= O_TRUNC; strcat(fl, "|TRUNC"); }
    if (rng_pct(&R, 60)) { flags |= O_CREAT; strcat(fl, "|CREAT"); }
    if (rng_pct(&R, 30)) { flags |= O_CLOEXEC; strcat(fl, "|CLOEXEC"); }
    if (rng_pct(&R, 4)) { flags |= O_DSYNC; strcat(fl, "|DSYNC"); }
    if (rng_pct(&R, 3)) { flags |= O_SYNC; strcat(fl, "|SYNC"); }
    if (rng_pct(&R, 3)) { flags |= O_DIRECT; strcat(fl, "|DIRECT"); }
    if (rng_pct(&R, 4)) { flags |= O_NONBLOCK; strcat(fl, "|NONBLOCK"); }
    int kind = (int)rng_below(&R, 12);
    int fd;
    errno = 0;
    const char *name;
    switch (kind) {
    case 0: case 1: case 2: name = "open"; fd = open(path, flags, 0644); break;
    case 3: case 4: name = "open64"; fd = open64(path, flags, 0644); break;
    case 5: case 6: { name = "openat(dirfd)"; int d = open(dirbuf, O_RDONLY | O_DIRECTORY);
        fd = openat(d, basebuf, flags, 0644); int e = errno; close(d); errno = e; break; }
    case 7: if (rng_pct(&R, 50)) { name = "openat(AT_FDCWD)"; fd = openat(AT_FDCWD, path, flags, 0644); break; }
        /* two-argument form with variable flags: __openat_2/__openat64_2 when fortified */
        name = "openat(AT_FDCWD,noflags-var)"; flags &= ~(O_CREAT | O_TRUNC); flagstr(flags, fl, sizeof fl); fd = openat(AT_FDCWD, path, flags); break;
    case 8: case 9: { name = "openat64(dirfd)"; int d = open(dirbuf, O_RDONLY | O_DIRECTORY);
        fd = openat64(d, basebuf, flags, 0644); int e = errno; close(d); errno = e; break; }
    case 10: if (rng_pct(&R, 80)) { name = "open(noflags-var)"; flags &= ~(O_CREAT | O_TRUNC); flagstr(flags, fl, sizeof fl); fd = open(path, flags); break; }
        name = "creat"; fd = creat(path, 0644); strcpy(fl, "-"); break;
    default: if (rng_pct(&R, 80)) { name = "open64(noflags-var)"; flags &= ~(O_CREAT | O_TRUNC); flagstr(flags, fl, sizeof fl); fd = open64(path, flags); break; }
        name = "creat64"; fd = creat64(path, 0644); strcpy(fl, "-"); break;
    }
    int e = errno;
    printf("%d %s(%s) = %s", step, name, fl, fd >= 0 ? "" : "");
    if (fd >= 0) {
        char lab[160];
        snprintf(lab, sizeof lab, "%s(%s)", name, fl);
        maybe_fdinfo(lab, fd);
        printf("s%d", s);
        slot_fd[s] = fd;
        out_pos(fd);
    } else {
        printf("-1 %s\n", errname(e));
    }
}

static void do_read(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    int k = (int)rng_below(&R, 8);
    struct bufs b;
    long long ret, off = 0;
    int e;
    const char *names[8] = {"read", "pread", "pread64", "readv", "preadv", "preadv64", "preadv2", "preadv64v2"};
    int niov = k < 3 ? 1 : 1 + (int)rng_below(&R, 4);
    bufs_make(&b, niov, 0, 1);
    if (k != 0 && k != 3) off = pick_off();
    errno = 0;
    /* the static buffer is named directly so that _FORTIFY_SOURCE knows its size and
     * calls __read_chk/__pread_chk/__pread64_chk */
    size_t smis = b.use_static ? (size_t)((char *)b.iov[0].iov_base - sbuf) : 0;
    switch (k) {
    case 0: ret = b.use_static ? read(fd, sbuf + smis, b.iov[0].iov_len) : read(fd, b.iov[0].iov_base, b.iov[0].iov_len); break;
    case 1: ret = b.use_static ? pread(fd, sbuf + smis, b.iov[0].iov_len, off) : pread(fd, b.iov[0].iov_base, b.iov[0].iov_len, off); break;
    case 2: ret = b.use_static ? pread64(fd, sbuf + smis, b.iov[0].iov_len, off) : pread64(fd, b.iov[0].iov_base, b.iov[0].iov_len, off); break;
    case 3: ret = readv(fd, b.iov, b.n); break;
    case 4: ret = preadv(fd, b.iov, b.n, off); break;
    case 5: ret = preadv64(fd, b.iov, b.n, off); break;
    case 6: ret = preadv2(fd, b.iov, b.n, off, 0); break;
    default: ret = preadv64v2(fd, b.iov, b.n, off, 0); break;
    }
    e = errno;
    printf("%d %s(%s,", step, names[k], lab);
    print_bufs(&b);
    if (k != 0 && k != 3) printf(",%lld", off);
    printf(")%s", b.use_static ? "S" : "");
    out_ret(ret, e);
    print_readhash(&b, ret);
    bufs_free(&b);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_write(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    int k = (int)rng_below(&R, 8);
    struct bufs b;
    long long ret, off = 0;
    int e;
    const char *names[8] = {"write", "pwrite", "pwrite64", "writev", "pwritev", "pwritev64", "pwritev2", "pwritev64v2"};
    int niov = k < 3 ? 1 : 1 + (int)rng_below(&R, 4);
    bufs_make(&b, niov, 1, 0);
    if (k != 0 && k != 3) off = pick_off();
    /* keep the file within a few MiB */
    if (off > 6 * 1048576) off = off % (6 * 1048576);
    errno = 0;
    switch (k) {
    case 0: ret = write(fd, b.iov[0].iov_base, b.iov[0].iov_len); break;
    case 1: ret = pwrite(fd, b.iov[0].iov_base, b.iov[0].iov_len, off); break;
    case 2: ret = pwrite64(fd, b.iov[0].iov_base, b.iov[0].iov_len, off); break;
    case 3: ret = writev(fd, b.iov, b.n); break;
    case 4: ret = pwritev(fd, b.iov, b.n, off); break;
    case 5: ret = pwritev64(fd, b.iov, b.n, off); break;
    case 6: ret = pwritev2(fd, b.iov, b.n, off, 0); break;
    default: ret = pwritev64v2(fd, b.iov, b.n, off, 0); break;
    }
    e = errno;
    printf("%d %s(%s,", step, names[k], lab);
    print_bufs(&b);
    if (k != 0 && k != 3) printf(",%lld", off);
    printf(")");
    out_ret(ret, e);
    bufs_free(&b);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_lseek(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    int wh = (int)rng_below(&R, 3);
    long long sz = cur_size(), off;
    const int whs[3] = {SEEK_SET, SEEK_CUR, SEEK_END};
    const char *whn[3] = {"SET", "CUR", "END"};
    switch (rng_below(&R, 6)) {
    case 0: off = wh == 0 ? (long long)rng_below(&R, sz + 1) : -(long long)rng_below(&R, 5000); break;
    case 1: off = (long long)rng_below(&R, 70000); break; /* beyond EOF for END/CUR */
    case 2: off = 4096 * (long long)rng_below(&R, 64); break;
    case 3: off = -(sz + 1 + (long long)rng_below(&R, 10)); break; /* negative result: EINVAL */
    case 4: off = 0; break;
    default: off = (long long)rng_below(&R, sz + 8192) - (wh == 0 ? 0 : sz / 2); break;
    }
    errno = 0;
    long long r = rng_pct(&R, 50) ? lseek(fd, off, whs[wh]) : lseek64(fd, off, whs[wh]);
    int e = errno;
    printf("%d lseek(%s,%lld,%s)", step, lab, off, whn[wh]);
    out_ret(r, e);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_trunc(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    long long sz = cur_size(), len;
    switch (rng_below(&R, 5)) {
    case 0: len = sz + 1 + (long long)rng_below(&R, 100000); break;
    case 1: len = (long long)rng_below(&R, sz + 1); break;
    case 2: len = 4096 * (long long)rng_below(&R, sz / 4096 + 2); break;
    case 3: len = sz > 10 ? sz - 1 - (long long)rng_below(&R, 9) : sz + 3; break;
    default: len = rng_pct(&R, 80) ? sz + (long long)rng_below(&R, 4097) : -1; break;
    }
    if (len > 6 * 1048576) len = 6 * 1048576 + 17;
    errno = 0;
    int r = rng_pct(&R, 50) ? ftruncate(fd, len) : ftruncate64(fd, len);
    int e = errno;
    printf("%d ftruncate(%s,%lld)", step, lab, len);
    out_ret(r, e);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_sync(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    int d = rng_pct(&R, 50);
    errno = 0;
    int r = d ? fdatasync(fd) : fsync(fd);
    int e = errno;
    printf("%d %s(%s)", step, d ? "fdatasync" : "fsync", lab);
    out_ret(r, e);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_dup(int step)
{
    int s = pick_slot();
    if (s < 0) return;
    int t = free_slot();
    if (t < 0) {
        int c = pick_slot();
        if (c == s) return;
        errno = 0;
        int r = close(slot_fd[c]);
        printf("%d close(s%d)", step, c);
        out_ret(r, errno);
        printf("\n");
        slot_fd[c] = -1;
        t = c;
    }
    int k = (int)rng_below(&R, 6);
    int nfd;
    const char *name;
    char extra[32] = "";
    errno = 0;
    switch (k) {
    case 0: name = "dup"; nfd = dup(slot_fd[s]); break;
    case 1: case 2: {
        /* dup2 onto another open slot (over a tracked fd) or onto a fixed free number */
        int o = pick_slot();
        int over = o >= 0 && o != s && rng_pct(&R, 50);
        int target = over ? slot_fd[o] : 60 + t;
        if (over) { snprintf(extra, sizeof extra, ",over s%d", o); slot_fd[o] = -1; t = o; }
        if (k == 1) { name = "dup2"; nfd = dup2(slot_fd[s], target); }
        else { name = "dup3"; nfd = dup3(slot_fd[s], target, O_CLOEXEC); }
        break;
    }
    case 3: name = "fcntl(F_DUPFD)"; nfd = fcntl(slot_fd[s], F_DUPFD, 20); break;
    case 4: name = "fcntl(F_DUPFD_CLOEXEC)"; nfd = fcntl(slot_fd[s], F_DUPFD_CLOEXEC, 30); break;
    default: name = "fcntl64(F_DUPFD)"; nfd = fcntl64(slot_fd[s], F_DUPFD, 40); break;
    }
    int e = errno;
    printf("%d %s(s%d%s) = ", step, name, s, extra);
    if (nfd >= 0) { slot_fd[t] = nfd; printf("s%d", t); out_pos(nfd); }
    else printf("-1 %s\n", errname(e));
}

static void do_fl(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    errno = 0;
    int fl = fcntl(fd, F_GETFL);
    int e = errno;
    if (fl >= 0 && rng_pct(&R, 35)) {
        /* the program's own F_SETFL: toggle O_APPEND or O_NONBLOCK */
        int nf = rng_pct(&R, 60) ? (fl ^ O_APPEND) : (fl ^ O_NONBLOCK);
        errno = 0;
        int r = fcntl(fd, F_SETFL, nf);
        e = errno;
        printf("%d fcntl(%s,F_SETFL,0%o)", step, lab, nf);
        out_ret(r, e);
        errno = 0;
        fl = fcntl(fd, F_GETFL);
        e = errno;
        printf(" ;");
    } else {
        printf("%d", step);
    }
    printf(" fcntl(%s,F_GETFL) = ", lab);
    if (fl < 0) printf("-1 %s", errname(e));
    else printf("0%o", fl);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_fstat(int step)
{
    int s = pick_slot();
    const char *lab;
    int fd = target_fd(s, &lab);
    struct stat st;
    errno = 0;
    int r = fstat(fd, &st);
    int e = errno;
    printf("%d fstat(%s)", step, lab);
    out_ret(r, e);
    if (r == 0) printf(" size=%lld", (long long)st.st_size);
    if (s >= 0 && fd == slot_fd[s]) out_pos(fd); else printf("\n");
}

static void do_close(int step)
{
    int s = pick_slot();
    if (s < 0) return;
    errno = 0;
    int r = close(slot_fd[s]);
    int e = errno;
    printf("%d close(s%d)", step, s);
    out_ret(r, e);
    printf("\n");
    slot_fd[s] = -1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: diffseq SEED PATH [N]\n");
        return 2;
    }
    uint64_t seed = strtoull(argv[1], NULL, 0);
    path = argv[2];
    int n = argc > 3 ? atoi(argv[3]) : 300;
    R.s = seed * 0x2545F4914F6CDD1DULL + 7;
    data_seed = seed ^ 0x5eedULL;
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", path);
        snprintf(dirbuf, sizeof dirbuf, "%s", dirname(tmp));
        snprintf(tmp, sizeof tmp, "%s", path);
        snprintf(basebuf, sizeof basebuf, "%s", basename(tmp));
    }
    for (int i = 0; i < NSLOT; i++) slot_fd[i] = -1;

    /* first slot: O_RDWR|O_CREAT */
    errno = 0;
    slot_fd[0] = open(path, O_RDWR | O_CREAT, 0644);
    printf("0 open(RDWR|CREAT) = %s", slot_fd[0] >= 0 ? "s0" : "-1");
    if (slot_fd[0] < 0) { printf(" %s\n", errname(errno)); return 1; }
    maybe_fdinfo("open(RDWR|CREAT)", slot_fd[0]);
    out_pos(slot_fd[0]);

    for (int step = 1; step <= n; step++) {
        cur_step = step;
        int w = (int)rng_below(&R, 100);
        if (pick_slot() < 0) w = 0;
        if (w < 7) do_open(step);
        else if (w < 35) do_read(step);
        else if (w < 60) do_write(step);
        else if (w < 70) do_lseek(step);
        else if (w < 75) do_trunc(step);
        else if (w < 79) do_sync(step);
        else if (w < 85) do_dup(step);
        else if (w < 91) do_fl(step);
        else if (w < 95) do_fstat(step);
        else do_close(step);
    }
    for (int i = 0; i < NSLOT; i++)
        if (slot_fd[i] >= 0) {
            errno = 0;
            int r = close(slot_fd[i]);
            printf("end close(s%d)", i);
            out_ret(r, errno);
            printf("\n");
        }
    long long size;
    uint64_t h = file_hash(path, &size);
    struct stat st;
    stat(path, &st);
    printf("final size=%lld st_size=%lld fnv=%016llx\n", size, (long long)st.st_size, (unsigned long long)h);
    return 0;
}
