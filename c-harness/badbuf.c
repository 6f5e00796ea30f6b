/* badbuf: hands every read and write entry point NULL, read-only and PROT_NONE-bordered
 * buffers and bad iovecs, and prints each result, errno, the file position, what landed in the
 * program's memory and the files' contents: run with and without the library, the output
 * must be identical (the kernel's answers).
 *
 * usage: badbuf DIR [seccomp]
 * With "seccomp", a filter makes process_vm_readv/process_vm_writev fail with EPERM (as a
 * sandbox may) once the data file is written: the library must then leave the calls to the
 * kernel, from the middle of the first read on, with the same output.
 * Memory: an arena of RW pages ending at a PROT_NONE page, then read-only pages. Buffers
 * start at several distances before the PROT_NONE page (page-aligned and not) so that
 * aligned requests take the engine's direct path and the others its bounce path; sequential
 * reads at the file position are served from read-ahead windows. */
#include "common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#define PG 4096L
#define RW_PAGES 600 /* 2.4 MiB: writes up to past the 1 MiB write-behind size fit */
#define FILE_SIZE (5 * 1048576L + 777)

extern ssize_t __read_chk(int, void *, size_t, size_t);
extern ssize_t __pread_chk(int, void *, size_t, off_t, size_t);
extern ssize_t __pread64_chk(int, void *, size_t, off_t, size_t);

static char *arena;    /* RW_PAGES pages RW */
static char *none_pg;  /* PROT_NONE */
static char *ro;       /* 4 read-only pages after it */
static char dir[4096];

static void reset_arena(void) { memset(arena, 0xAA, RW_PAGES * PG); }

/* FNV-1a over 64-bit words of the arena, leaving out its last 64 bytes, where the bad-array
 * cases store pointers (which differ from run to run) */
static uint64_t arena_hash(void)
{
    const uint64_t *w = (const uint64_t *)arena;
    uint64_t h = FNV_INIT;
    for (size_t i = 0; i < (RW_PAGES * PG - 64) / 8; i++) h = (h ^ w[i]) * 0x100000001b3ULL;
    return h;
}

static void show(const char *what, long long r, int e, int fd)
{
    long long pos = fd >= 0 ? (long long)lseek(fd, 0, SEEK_CUR) : -1;
    printf("%-58s r=%lld errno=%s pos=%lld mem=%016llx\n", what, r, r < 0 ? errname(e) : "-", pos,
           (unsigned long long)arena_hash());
    fflush(stdout);
}

static void show_file(const char *name)
{
    char p[8192];
    long long size;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    uint64_t h = file_hash(p, &size);
    printf("  file %s size=%lld hash=%016llx\n", name, size, (unsigned long long)h);
}

/* a buffer `back` bytes before the PROT_NONE page */
static char *border(long back) { return none_pg - back; }

static const long backs[] = {100, 4095, PG, 2 * PG, 16 * PG, 16 * PG + 100, 300 * PG, 300 * PG + 1};
static const size_t lens[] = {1, 1000, PG, 5000, 2 * PG, 65536, 65536 + 4096, 1048576, 1048576 + 8192};
static const off_t offs[] = {0, 1, 100, PG, 65536, FILE_SIZE - 3000};
#define N(a) (sizeof(a) / sizeof((a)[0]))

enum { R_READ, R_PREAD, R_PREAD64, R_READV, R_PREADV, R_PREADV2, R_READ_CHK, R_PREAD_CHK, R_PREAD64_CHK, R_N };
static const char *rname[] = {"read", "pread", "pread64", "readv", "preadv", "preadv2", "__read_chk", "__pread_chk",
                              "__pread64_chk"};

static ssize_t do_read(int how, int fd, void *b, size_t n, off_t off)
{
    struct iovec v = {b, n};
    switch (how) {
    case R_READ: lseek(fd, off, SEEK_SET); return read(fd, b, n);
    case R_PREAD: return pread(fd, b, n, off);
    case R_PREAD64: return pread64(fd, b, n, off);
    case R_READV: lseek(fd, off, SEEK_SET); return readv(fd, &v, 1);
    case R_PREADV: return preadv(fd, &v, 1, off);
    case R_PREADV2: return preadv2(fd, &v, 1, off, 0);
    case R_READ_CHK: lseek(fd, off, SEEK_SET); return __read_chk(fd, b, n, n);
    case R_PREAD_CHK: return __pread_chk(fd, b, n, off, n);
    default: return __pread64_chk(fd, b, n, off, n);
    }
}

enum { W_WRITE, W_PWRITE, W_PWRITE64, W_WRITEV, W_PWRITEV, W_PWRITEV2, W_N };
static const char *wname[] = {"write", "pwrite", "pwrite64", "writev", "pwritev", "pwritev2"};

static ssize_t do_write(int how, int fd, const void *b, size_t n, off_t off)
{
    struct iovec v = {(void *)b, n};
    switch (how) {
    case W_WRITE: lseek(fd, off, SEEK_SET); return write(fd, b, n);
    case W_PWRITE: return pwrite(fd, b, n, off);
    case W_PWRITE64: return pwrite64(fd, b, n, off);
    case W_WRITEV: lseek(fd, off, SEEK_SET); return writev(fd, &v, 1);
    case W_PWRITEV: return pwritev(fd, &v, 1, off);
    default: return pwritev2(fd, &v, 1, off, 0);
    }
}

static int open_in(const char *name, int flags)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, flags, 0644);
    if (fd < 0) die("open %s: %s", p, strerror(errno));
    return fd;
}

static void reads(int fd)
{
    char what[160];
    for (int how = 0; how < R_N; how++) {
        /* NULL and read-only buffers */
        for (size_t li = 0; li < N(lens); li += 2) {
            reset_arena();
            errno = 0;
            ssize_t r = do_read(how, fd, NULL, lens[li], offs[li % N(offs)]);
            snprintf(what, sizeof what, "%s NULL len %zu off %lld", rname[how], lens[li], (long long)offs[li % N(offs)]);
            show(what, r, errno, fd);
            errno = 0;
            r = do_read(how, fd, ro + (li & 1 ? 100 : 0), lens[li] < 2 * PG ? lens[li] : 2 * PG, offs[(li + 1) % N(offs)]);
            snprintf(what, sizeof what, "%s read-only len %zu", rname[how], lens[li]);
            show(what, r, errno, fd);
        }
        /* buffers running into the PROT_NONE page */
        for (size_t bi = 0; bi < N(backs); bi++)
            for (size_t li = 0; li < N(lens); li++)
                for (size_t oi = 0; oi < N(offs); oi++) {
                    if ((bi + li + oi + how) % 3 != 0 && lens[li] < (size_t)backs[bi]) continue;
                    reset_arena();
                    errno = 0;
                    ssize_t r = do_read(how, fd, border(backs[bi]), lens[li], offs[oi]);
                    snprintf(what, sizeof what, "%s border -%ld len %zu off %lld", rname[how], backs[bi], lens[li],
                             (long long)offs[oi]);
                    show(what, r, errno, fd);
                }
    }
    /* sequential reads at the file position (read-ahead windows), one bad buffer among them */
    for (int how = 0; how < 2; how++) {
        size_t sizes[] = {4096, 1000, 65536};
        for (size_t si = 0; si < N(sizes); si++) {
            lseek(fd, how ? 7 : 0, SEEK_SET);
            for (int k = 0; k < 40; k++) {
                reset_arena();
                char *b = arena + (k % 3) * 100;
                const char *kind = "good";
                if (k == 12) b = NULL, kind = "NULL";
                else if (k == 20) b = border(sizes[si] / 2 + 1), kind = "border";
                else if (k == 25) b = ro, kind = "read-only";
                else if (k == 30) b = border(100), kind = "border-100";
                errno = 0;
                ssize_t r = read(fd, b, sizes[si]);
                snprintf(what, sizeof what, "seq read %zu #%d %s", sizes[si], k, kind);
                show(what, r, errno, fd);
            }
            /* the same with pread at increasing offsets */
            off_t o = how ? 7 : 0;
            for (int k = 0; k < 40; k++) {
                reset_arena();
                char *b = arena + (k % 3) * 100;
                if (k == 12) b = NULL;
                else if (k == 20) b = border(sizes[si] / 2 + 1);
                else if (k == 30) b = border(4096);
                errno = 0;
                ssize_t r = pread(fd, b, sizes[si], o);
                snprintf(what, sizeof what, "seq pread %zu #%d", sizes[si], k);
                show(what, r, errno, fd);
                if (r > 0) o += r;
                else o += sizes[si];
            }
        }
    }
}

/* iovec arrays with one bad element (first, middle, last), and bad arrays */
static void vectors(int rfd, int wfd)
{
    char what[160];
    const size_t el = 5000;
    for (int bad = 0; bad < 4; bad++)
        for (int kind = 0; kind < 3; kind++) {
            struct iovec v[3];
            for (int i = 0; i < 3; i++) { v[i].iov_base = arena + i * 3 * PG + 1; v[i].iov_len = el; }
            if (bad < 3) {
                v[bad].iov_base = kind == 0 ? (void *)1 : kind == 1 ? (void *)border(100) : (void *)ro;
                v[bad].iov_len = kind == 0 ? 10 : el;
            }
            const char *kn = kind == 0 ? "(void*)1" : kind == 1 ? "border" : "read-only";
            for (int op = 0; op < 6; op++) {
                reset_arena();
                gen_fill(77, 0, arena, 12 * PG);
                errno = 0;
                ssize_t r;
                off_t off = bad == 2 ? 100 : 65536;
                switch (op) {
                case 0: lseek(rfd, off, SEEK_SET); r = readv(rfd, v, 3); break;
                case 1: r = preadv(rfd, v, 3, off); break;
                case 2: r = preadv2(rfd, v, 3, off, 0); break;
                case 3: lseek(wfd, off, SEEK_SET); r = writev(wfd, v, 3); break;
                case 4: r = pwritev(wfd, v, 3, off); break;
                default: r = pwritev2(wfd, v, 3, off, 0); break;
                }
                static const char *on[] = {"readv", "preadv", "preadv2", "writev", "pwritev", "pwritev2"};
                snprintf(what, sizeof what, "%s bad iovec %d of 3 %s", on[op], bad, kn);
                show(what, r, errno, op < 3 ? rfd : wfd);
                if (op >= 3) show_file("w");
            }
        }
    /* the array itself: NULL, PROT_NONE, running into PROT_NONE */
    struct iovec *arrays[3] = {NULL, (struct iovec *)none_pg, (struct iovec *)(none_pg - 2 * sizeof(struct iovec))};
    for (int a = 0; a < 3; a++) {
        if (a == 2) {
            arrays[2][0] = (struct iovec){arena, 100};
            arrays[2][1] = (struct iovec){arena + PG, 100};
        }
        for (int op = 0; op < 6; op++) {
            errno = 0;
            ssize_t r;
            switch (op) {
            case 0: r = readv(rfd, arrays[a], 3); break;
            case 1: r = preadv(rfd, arrays[a], 3, 0); break;
            case 2: r = preadv2(rfd, arrays[a], 3, 0, 0); break;
            case 3: r = writev(wfd, arrays[a], 3); break;
            case 4: r = pwritev(wfd, arrays[a], 3, 0); break;
            default: r = pwritev2(wfd, arrays[a], 3, 0, 0); break;
            }
            snprintf(what, sizeof what, "vector op %d array %d", op, a);
            show(what, r, errno, op < 3 ? rfd : wfd);
        }
    }
    show_file("w");
}

static void writes(int wfd)
{
    char what[160];
    static const long wbacks[] = {100, PG, 16 * PG + 100, 300 * PG, 300 * PG + 1, RW_PAGES * PG - PG};
    static const size_t wlens[] = {10, 5000, 65536, 1048576, 1048576 + 4096 + 3, 2 * 1048576};
    static const off_t woffs[] = {0, 100, 1048576, 3 * 1048576 + 5};
    for (int how = 0; how < W_N; how++) {
        for (size_t li = 0; li < N(wlens); li++) {
            errno = 0;
            ssize_t r = do_write(how, wfd, NULL, wlens[li], woffs[li % N(woffs)]);
            snprintf(what, sizeof what, "%s NULL len %zu", wname[how], wlens[li]);
            show(what, r, errno, wfd);
            errno = 0;
            r = do_write(how, wfd, ro + 7, wlens[li] < 3 * PG ? wlens[li] : 3 * PG, woffs[(li + 1) % N(woffs)]);
            snprintf(what, sizeof what, "%s from read-only len %zu", wname[how], wlens[li]);
            show(what, r, errno, wfd);
        }
        for (size_t bi = 0; bi < N(wbacks); bi++)
            for (size_t li = 0; li < N(wlens); li++)
                for (size_t oi = 0; oi < N(woffs); oi++) {
                    if ((bi + li + oi + how) % 2 != 0) continue;
                    gen_fill(how * 100 + bi * 10 + li, oi, arena, RW_PAGES * PG);
                    errno = 0;
                    ssize_t r = do_write(how, wfd, border(wbacks[bi]), wlens[li], woffs[oi]);
                    snprintf(what, sizeof what, "%s border -%ld len %zu off %lld", wname[how], wbacks[bi], wlens[li],
                             (long long)woffs[oi]);
                    show(what, r, errno, wfd);
                }
        show_file("w");
    }
}

/* the kernel's copies with bad offset pointers */
static void copies(void)
{
    char what[160];
    int in = open_in("data", O_RDONLY), out = open_in("c", O_RDWR | O_CREAT | O_TRUNC);
    loff_t *ptrs[4] = {(loff_t *)1, (loff_t *)none_pg, (loff_t *)(none_pg - 4), (loff_t *)ro};
    for (int p = 0; p < 4; p++) {
        for (int side = 0; side < 2; side++) {
            loff_t good = 4096;
            errno = 0;
            ssize_t r = copy_file_range(in, side ? &good : ptrs[p], out, side ? ptrs[p] : &good, 10000, 0);
            snprintf(what, sizeof what, "copy_file_range bad %s pointer %d", side ? "out" : "in", p);
            show(what, r, errno, in);
            printf("  good offset %lld\n", (long long)good);
        }
        errno = 0;
        ssize_t r = sendfile(out, in, (off_t *)ptrs[p], 10000);
        snprintf(what, sizeof what, "sendfile bad offset pointer %d", p);
        show(what, r, errno, in);
        show_file("c");
    }
    close(in);
    close(out);
}

static void refuse_process_vm(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_readv, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_writev, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
        die("seccomp: %s", strerror(errno));
}

int main(int argc, char **argv)
{
    if (argc != 2 && !(argc == 3 && !strcmp(argv[2], "seccomp"))) die("usage: badbuf DIR [seccomp]");
    snprintf(dir, sizeof dir, "%s", argv[1]);
    char *m = mmap(NULL, (RW_PAGES + 5) * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("mmap");
    arena = m;
    none_pg = m + RW_PAGES * PG;
    ro = none_pg + PG;
    gen_fill(5, 0, ro, 4 * PG);
    /* as an offset (the copy calls' read-only pointer case) a small one: where it is read, the
     * copy goes there, not to the largest offset the filesystem allows */
    *(loff_t *)ro = 8192;
    if (mprotect(none_pg, PG, PROT_NONE) || mprotect(ro, 4 * PG, PROT_READ)) die("mprotect");

    int fd = open_in("data", O_RDWR | O_CREAT | O_TRUNC);
    char *gen = malloc(FILE_SIZE);
    gen_fill(1, 0, gen, FILE_SIZE);
    if (write_all(fd, gen, FILE_SIZE)) die("write");
    free(gen);
    fsync(fd);
    close(fd);

    /* refused from the first read on (which the library starts serving, then leaves) */
    if (argc == 3) refuse_process_vm();
    int rfd = open_in("data", O_RDONLY);
    reads(rfd);
    int wfd = open_in("w", O_RDWR | O_CREAT | O_TRUNC);
    vectors(rfd, wfd);
    writes(wfd);
    close(wfd);
    /* an O_APPEND description: appends from bad buffers */
    wfd = open_in("w", O_WRONLY | O_APPEND);
    for (int k = 0; k < 6; k++) {
        size_t n = k < 3 ? 1048576 + k * 4096 : 5000;
        gen_fill(k, 0, arena, RW_PAGES * PG);
        errno = 0;
        char *volatile b = k % 2 ? border(n / 2) : NULL;
        ssize_t r = write(wfd, b, n);
        char what[100];
        snprintf(what, sizeof what, "append %zu %s", n, k % 2 ? "border" : "NULL");
        show(what, r, errno, wfd);
    }
    close(wfd);
    show_file("w");
    copies();
    close(rfd);
    return 0;
}
