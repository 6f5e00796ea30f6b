/* errnos: the kernel's error answers for every call the library answers or wraps, printed
 * (result, errno, file positions, offsets written back, file contents) so that a run with
 * the library can be compared with a plain one.
 *
 * usage: errnos DIR calls     read/write families: access modes, offsets, lengths, IOV_MAX,
 *                             preadv2/pwritev2 flags; lseek whences; fcntl commands;
 *                             copy_file_range, sendfile and splice cases the kernel rejects
 *        errnos DIR fsize     RLIMIT_FSIZE: each case in a child, with SIGXFSZ default and
 *                             ignored; prints how the child ended and what it wrote
 *        errnos DIR unmap     a thread takes the buffer's pages away (PROT_NONE) and back
 *                             while reads and writes run: prints only whether every result
 *                             was one the kernel gives and the files past the counts kept
 *        errnos DIR full      writes 1 MiB pieces until the filesystem is full: prints the
 *                             errno and whether the size is what was acknowledged */
#include "common.h"
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <sys/wait.h>

#define PG 4096L
static char dir[4096];

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static int open_in(const char *name, int flags)
{
    char p[8192];
    path_of(p, sizeof p, name);
    return open(p, flags, 0644);
}

static void make(const char *name, long size, int seed)
{
    int fd = open_in(name, O_RDWR | O_CREAT | O_TRUNC);
    if (fd < 0) die("create %s: %s", name, strerror(errno));
    char *b = malloc(size + 1);
    gen_fill(seed, 0, b, size);
    if (write_all(fd, b, size)) die("write %s", name);
    free(b);
    close(fd);
}

/* size, and a hash of the first 8 MiB and the last 64 KiB (files here can be sparse and
 * near the largest size the filesystem allows) */
static void show_file(const char *name)
{
    char p[8192];
    path_of(p, sizeof p, name);
    int fd = open(p, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) die("show_file %s", name);
    static char buf[1 << 20];
    uint64_t h = FNV_INIT;
    long long ranges[2][2] = {{0, st.st_size < (8 << 20) ? st.st_size : (8 << 20)},
                              {st.st_size > 65536 ? st.st_size - 65536 : 0, st.st_size}};
    for (int i = 0; i < 2; i++)
        for (long long o = ranges[i][0]; o < ranges[i][1];) {
            ssize_t n = pread(fd, buf, ranges[i][1] - o < (1 << 20) ? ranges[i][1] - o : (1 << 20), o);
            if (n <= 0) { h ^= 0xdead; break; }
            h = fnv1a(h, buf, n);
            o += n;
        }
    close(fd);
    printf("  file %s size=%lld hash=%016llx\n", name, (long long)st.st_size, (unsigned long long)h);
}

static void show(const char *what, long long r, int e, int fd)
{
    long long pos = fd >= 0 ? (long long)lseek(fd, 0, SEEK_CUR) : -1;
    printf("%-52s r=%lld errno=%s pos=%lld\n", what, r, r < 0 ? errname(e) : "-", pos);
    fflush(stdout);
}

#define SHOW(fd, expr)                    \
    do {                                  \
        errno = 0;                        \
        long long r_ = (long long)(expr); \
        show(#expr, r_, errno, fd);       \
    } while (0)

static void rw_calls(void)
{
    make("r", 3 * 1048576 + 123, 1);
    make("w", 1048576, 2);
    int rd = open_in("r", O_RDONLY), wo = open_in("w", O_WRONLY), rw = open_in("w", O_RDWR);
    int ap = open_in("w", O_WRONLY | O_APPEND);
    char *b = xalloc(4 << 20, 0), *mb = b + 100;
    gen_fill(9, 0, b, 4 << 20);
    struct iovec v1[2] = {{b, 5000}, {mb + 8192, 3000}};

    /* access modes */
    SHOW(wo, read(wo, b, 4096));
    SHOW(wo, pread(wo, b, 4096, 0));
    SHOW(wo, readv(wo, v1, 2));
    SHOW(wo, preadv(wo, v1, 2, 0));
    SHOW(wo, preadv2(wo, v1, 2, -1, 0));
    SHOW(rd, write(rd, b, 4096));
    SHOW(rd, pwrite(rd, b, 1 << 20, 0));
    SHOW(rd, writev(rd, v1, 2));
    SHOW(rd, pwritev(rd, v1, 2, 0));
    SHOW(rd, pwritev2(rd, v1, 2, -1, 0));
    /* offsets and lengths */
    SHOW(rd, pread(rd, b, 4096, -1));
    SHOW(rd, pread(rd, b, 4096, LLONG_MIN));
    SHOW(rd, pread(rd, b, 4096, LLONG_MAX));
    SHOW(rd, pread(rd, b, 4096, LLONG_MAX - 4095));
    SHOW(rd, pread(rd, b, 4096, LLONG_MAX - 5000));
    SHOW(rd, pread(rd, b, 8192, (1LL << 62)));
    SHOW(rd, pread(rd, b, SIZE_MAX, 0));
    SHOW(rd, pread(rd, b, (size_t)SSIZE_MAX + 1, 0));
    SHOW(rd, pread(rd, b, 3UL << 30, 0));
    SHOW(rd, read(rd, b, 0));
    SHOW(rd, pread(rd, b, 0, 5));
    SHOW(rd, lseek(rd, (1LL << 40), SEEK_SET));
    SHOW(rd, read(rd, b, 5000));
    SHOW(rd, lseek(rd, 0, SEEK_SET));
    SHOW(rd, read(rd, b, 3UL << 30));
    SHOW(rd, read(rd, b, SIZE_MAX));
    SHOW(rw, pwrite(rw, b, 4096, -1));
    SHOW(rw, pwrite(rw, b, 1 << 20, LLONG_MAX - 4095));
    SHOW(rw, pwrite(rw, b, 1 << 20, LLONG_MAX - (2 << 20)));
    SHOW(rw, pwrite(rw, b, 1 << 20, (1LL << 44) - 100));
    SHOW(rw, pwrite(rw, mb, (2 << 20) + 5, (1LL << 44) - (1 << 20)));
    SHOW(rw, pwrite(rw, b, 1 << 20, (1LL << 62)));
    SHOW(rw, pwrite(rw, b, SIZE_MAX, 0));
    SHOW(rw, write(rw, b, 0));
    show_file("w");
    /* vector calls: counts, lengths */
    struct iovec many[1100];
    for (int i = 0; i < 1100; i++) many[i] = (struct iovec){b + i * 16, 16};
    SHOW(rd, readv(rd, many, 0));
    SHOW(rd, readv(rd, many, -1));
    SHOW(rd, readv(rd, many, 1024));
    SHOW(rd, readv(rd, many, 1025));
    SHOW(rd, preadv(rd, many, 1025, 0));
    SHOW(rw, writev(rw, many, 1025));
    SHOW(rw, pwritev(rw, many, 1024, 5));
    struct iovec neg[2] = {{b, 100}, {b, (size_t)SSIZE_MAX + 1}};
    SHOW(rd, preadv(rd, neg, 2, 0));
    SHOW(rw, pwritev(rw, neg, 2, 0));
    struct iovec ovf[2] = {{b, (size_t)SSIZE_MAX / 2 + 1}, {b, (size_t)SSIZE_MAX / 2 + 1}};
    SHOW(rd, preadv(rd, ovf, 2, 0));
    SHOW(rw, pwritev(rw, ovf, 2, 0));
    struct iovec big[2] = {{b, 1 << 20}, {b, 3UL << 30}};
    SHOW(rd, preadv(rd, big, 2, 0));
    struct iovec zero[2] = {{NULL, 0}, {(void *)1, 0}};
    SHOW(rd, preadv(rd, zero, 2, 0));
    SHOW(rw, pwritev(rw, zero, 2, 0));
    SHOW(rd, preadv(rd, v1, 2, -1));
    SHOW(rd, preadv2(rd, v1, 2, -2, 0));
    SHOW(rw, pwritev2(rw, v1, 2, -2, 0));
    show_file("w");
    /* preadv2/pwritev2 flags, one at a time and some combinations */
    static const int flags[] = {0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x30, 0x40, 0x80, 0x100, 0x200, (int)0x80000000, 0x3};
    struct iovec fv[2] = {{mb, 1 << 20}, {b + (2 << 20), 8192}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        char what[100];
        errno = 0;
        long long r = preadv2(rd, fv, 2, 4096, flags[i]);
        snprintf(what, sizeof what, "preadv2 flags %#x", flags[i]);
        show(what, r, errno, rd);
        errno = 0;
        r = preadv2(rd, fv, 2, -1, flags[i]);
        snprintf(what, sizeof what, "preadv2 at position flags %#x", flags[i]);
        show(what, r, errno, rd);
        errno = 0;
        r = pwritev2(rw, fv, 2, 100 + i * 4096, flags[i]);
        snprintf(what, sizeof what, "pwritev2 flags %#x", flags[i]);
        show(what, r, errno, rw);
        errno = 0;
        r = pwritev2(ap, fv, 2, 0, flags[i]);
        snprintf(what, sizeof what, "pwritev2 O_APPEND flags %#x", flags[i]);
        show(what, r, errno, ap);
        errno = 0;
        r = pwritev2(rw, fv, 2, -1, flags[i]);
        snprintf(what, sizeof what, "pwritev2 at position flags %#x", flags[i]);
        show(what, r, errno, rw);
        show_file("w");
    }
    /* appends */
    SHOW(ap, write(ap, mb, (1 << 20) + 7));
    SHOW(ap, pwrite(ap, b, 1 << 20, 5));
    SHOW(ap, pwrite(ap, b, 1 << 20, -5));
    show_file("w");

    /* lseek */
    static const int whences[] = {SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE, 5, -1, 100};
    static const long long offs[] = {0, 100, -1, -5000, 1LL << 40, LLONG_MAX, LLONG_MIN, 3 * 1048576 + 123, 3 * 1048576 + 124};
    for (size_t w = 0; w < sizeof whences / sizeof whences[0]; w++)
        for (size_t o = 0; o < sizeof offs / sizeof offs[0]; o++) {
            char what[100];
            lseek(rd, 4096, SEEK_SET);
            errno = 0;
            long long r = lseek(rd, offs[o], whences[w]);
            snprintf(what, sizeof what, "lseek %lld whence %d", offs[o], whences[w]);
            show(what, r, errno, rd);
        }
    /* fcntl */
    SHOW(rw, fcntl(rw, F_GETFL) & ~O_LARGEFILE);
    SHOW(rw, fcntl(rw, F_SETFL, O_APPEND | O_NONBLOCK));
    SHOW(rw, fcntl(rw, F_GETFL) & ~O_LARGEFILE);
    SHOW(rw, write(rw, b, 5000));
    SHOW(rw, fcntl(rw, F_SETFL, 0));
    SHOW(rw, fcntl(rw, F_GETFL) & ~O_LARGEFILE);
    SHOW(rw, fcntl(rw, F_SETFL, O_DIRECT));
    SHOW(rw, fcntl(rw, F_GETFL) & ~O_LARGEFILE);
    SHOW(rw, pread(rw, b + 1, 4096, 0));
    SHOW(rw, pread(rw, b, 4096, 0));
    SHOW(rw, pread(rw, b, 5000, 1));
    SHOW(rw, fcntl(rw, F_SETFL, 0));
    SHOW(rw, fcntl(rw, F_SETFL, O_RDONLY | O_TRUNC | O_CREAT));
    SHOW(rw, fcntl(rw, F_GETFL) & ~O_LARGEFILE);
    SHOW(rw, fcntl(rw, F_GETFD));
    SHOW(rw, fcntl(rw, F_SETFD, FD_CLOEXEC));
    SHOW(rw, fcntl(rw, F_GETFD));
    SHOW(rw, fcntl(rw, F_DUPFD, -1));
    SHOW(rw, fcntl(rw, F_DUPFD, INT_MAX));
    SHOW(rw, fcntl(rw, 12345));
    SHOW(-1, fcntl(-1, F_GETFL));
    SHOW(rw, fcntl(rw, F_GETLK, NULL));
    SHOW(rw, fcntl(rw, F_SETLK, (void *)1));
    show_file("w");
    close(rd);
    close(wo);
    close(rw);
    close(ap);
}

static void copy_calls(void)
{
    make("src", 1048576 + 4097, 3);
    make("dst", 65536, 4);
    int in = open_in("src", O_RDONLY), out = open_in("dst", O_RDWR), ro = open_in("dst", O_RDONLY);
    int wo = open_in("src", O_WRONLY), ap = open_in("dst", O_WRONLY | O_APPEND), same = open_in("src", O_RDWR);
    int p[2];
    if (pipe(p)) die("pipe");
    loff_t a, c;
#define CFR(fi, oi, fo, oo, len, fl)                                                                       \
    do {                                                                                                   \
        errno = 0;                                                                                         \
        long long r_ = copy_file_range(fi, oi, fo, oo, len, fl);                                           \
        show("copy_file_range(" #fi ", " #oi ", " #fo ", " #oo ", " #len ", " #fl ")", r_, errno, fi);    \
        printf("  a=%lld c=%lld out pos=%lld\n", (long long)a, (long long)c, (long long)lseek(fo, 0, SEEK_CUR)); \
    } while (0)
    a = 0, c = 0;
    CFR(in, &a, out, &c, 10000, 0);
    CFR(in, NULL, out, NULL, 10000, 0);
    CFR(in, &a, ap, NULL, 10000, 0);
    CFR(in, &a, ap, &c, 10000, 0);
    CFR(in, &a, out, &c, 10000, 1);
    CFR(wo, &a, out, &c, 10000, 0);
    CFR(in, &a, ro, &c, 10000, 0);
    a = 0, c = 100;
    CFR(same, &a, same, &c, 10000, 0);
    a = 0, c = 10000;
    CFR(same, &a, same, &c, 10000, 0);
    a = 0, c = 2 * 1048576;
    CFR(same, &a, same, &c, 10000, 0);
    a = -1, c = 0;
    CFR(in, &a, out, &c, 100, 0);
    a = 0, c = -1;
    CFR(in, &a, out, &c, 100, 0);
    a = LLONG_MAX - 10, c = 0;
    CFR(in, &a, out, &c, 100, 0);
    a = 0, c = LLONG_MAX - 10;
    CFR(in, &a, out, &c, 100, 0);
    a = 0, c = 0;
    CFR(in, &a, out, &c, SIZE_MAX, 0);
    CFR(in, &a, out, &c, (size_t)SSIZE_MAX + 1, 0);
    CFR(in, &a, out, &c, 0, 0);
    a = 1048576 + 4097, c = 0;
    CFR(in, &a, out, &c, 100, 0);
    a = 5;
    CFR(in, &a, p[1], NULL, 100, 0);
    CFR(p[0], NULL, out, &c, 100, 0);
    a = 0, c = 1LL << 44;
    CFR(in, &a, out, &c, 100, 0);
    show_file("dst");
    /* sendfile */
    off_t so = 0;
#define SF(o, i, off, n)                                                              \
    do {                                                                               \
        errno = 0;                                                                     \
        long long r_ = sendfile(o, i, off, n);                                         \
        show("sendfile(" #o ", " #i ", " #off ", " #n ")", r_, errno, i);              \
        printf("  so=%lld out pos=%lld\n", (long long)so, (long long)lseek(o, 0, SEEK_CUR)); \
    } while (0)
    SF(out, in, &so, 5000);
    SF(out, in, NULL, 5000);
    SF(ap, in, &so, 5000);
    SF(ro, in, &so, 5000);
    SF(out, wo, &so, 5000);
    so = -1;
    SF(out, in, &so, 5000);
    so = LLONG_MAX - 10;
    SF(out, in, &so, 5000);
    so = 0;
    SF(out, in, &so, SIZE_MAX);
    SF(out, in, &so, 0);
    SF(p[1], in, &so, 5000);
    SF(out, p[0], NULL, 5000);
    SF(out, out, &so, 5000);
    show_file("dst");
    /* splice */
#define SP(fi, oi, fo, oo, n, fl)                                                        \
    do {                                                                                  \
        errno = 0;                                                                        \
        long long r_ = splice(fi, oi, fo, oo, n, fl);                                     \
        show("splice(" #fi ", " #oi ", " #fo ", " #oo ", " #n ", " #fl ")", r_, errno, fi); \
        printf("  a=%lld c=%lld\n", (long long)a, (long long)c);                          \
    } while (0)
    a = 0, c = 0;
    SP(in, &a, out, &c, 100, 0);
    SP(in, &a, p[1], NULL, 100, 0);
    SP(in, &a, p[1], &c, 100, 0);
    SP(p[0], NULL, out, &c, 50, 0);
    SP(p[0], NULL, ap, NULL, 50, 0);
    SP(p[0], NULL, ro, NULL, 50, 0);
    SP(wo, NULL, p[1], NULL, 50, 0);
    a = -1;
    SP(in, &a, p[1], NULL, 100, 0);
    a = 0;
    SP(in, &a, p[1], NULL, 100, 0xff00);
    SP(p[0], NULL, out, &c, 150, SPLICE_F_NONBLOCK);
    SP(p[0], NULL, out, &c, 150, SPLICE_F_NONBLOCK);
    show_file("dst");
    close(in);
    close(out);
    close(ro);
    close(wo);
    close(ap);
    close(same);
}

/* RLIMIT_FSIZE: one case per child (the default SIGXFSZ kills it) */
static void fsize_case(int ignore, long limit, int how, long long off, size_t len, size_t mis)
{
    char name[64];
    snprintf(name, sizeof name, "fs-%d-%ld-%d-%lld-%zu-%zu", ignore, limit, how, off, len, mis);
    make(name, 3 * 1048576 / 2 + 11, 5);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (ignore) signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {(rlim_t)limit, RLIM_INFINITY};
        if (setrlimit(RLIMIT_FSIZE, &rl)) die("setrlimit");
        int fd = open_in(name, O_RDWR | (how == 3 ? O_APPEND : 0));
        char *b = xalloc(len + 8192, mis);
        gen_fill(6, 0, b, len);
        struct iovec v[2] = {{b, len / 3}, {b + len / 3, len - len / 3}};
        long long r;
        errno = 0;
        switch (how) {
        case 0: r = pwrite(fd, b, len, off); break;
        case 1: lseek(fd, off, SEEK_SET); r = write(fd, b, len); break;
        case 2: r = pwritev(fd, v, 2, off); break;
        case 3: r = write(fd, b, len); break;
        default: lseek(fd, off, SEEK_SET); r = writev(fd, v, 2); break;
        }
        printf("  %s r=%lld errno=%s pos=%lld\n", name, r, r < 0 ? errname(errno) : "-", (long long)lseek(fd, 0, SEEK_CUR));
        fflush(stdout);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    printf("%s: %s %d\n", name, WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    show_file(name);
    char p[8192];
    path_of(p, sizeof p, name);
    unlink(p);
}

static void fsize(void)
{
    static const long limits[] = {1048576 + 4096, 2 * 1048576, 2 * 1048576 + 100, 1048576 / 2};
    static const long long offs[] = {0, 100, 1048576, 1048576 + 4096, 2 * 1048576, 2 * 1048576 + 100, 3 * 1048576};
    static const size_t lens[] = {100, 5000, 1048576, 2 * 1048576 + 5, 1048576 + 4096};
    for (int ignore = 0; ignore < 2; ignore++)
        for (size_t l = 0; l < sizeof limits / sizeof limits[0]; l++)
            for (size_t o = 0; o < sizeof offs / sizeof offs[0]; o++)
                for (size_t n = 0; n < sizeof lens / sizeof lens[0]; n++) {
                    int how = (int)((l + o + n) % 5);
                    if ((l + o + n + ignore) % 2) continue;
                    fsize_case(ignore, limits[l], how, offs[o], lens[n], (o + n) % 3 ? 0 : 100);
                }
}

/* a thread unmapping the buffer during reads and writes */
static char *volatile ubuf;
static volatile int stop;
#define UBUF (4L << 20)

static void *unmapper(void *arg)
{
    (void)arg;
    /* The pages go away and come back as fresh ones; the range is never a hole, where any
     * other mapping (malloc's, the library's) could be placed and then be clobbered. */
    while (!stop) {
        if (mmap(ubuf, UBUF, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED) die("mmap");
        usleep(50);
        if (mmap(ubuf, UBUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) die("mmap");
        usleep(200);
    }
    return NULL;
}

static void unmap(void)
{
    make("u", 8 << 20, 7);
    int fd = open_in("u", O_RDWR);
    ubuf = mmap(NULL, UBUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ubuf == MAP_FAILED) die("mmap");
    /* everything allocated before the thread starts: an allocation could land in the hole */
    char *before = malloc(3 << 20), *after = malloc(3 << 20);
    fprintf(stderr, "unmap starts\n");
    pthread_t t;
    pthread_create(&t, NULL, unmapper, NULL);
    static const size_t lens[] = {100, 4096, 5000, 65536, 1048576, 1048576 + 4096 + 3, 3 << 20};
    long ok = 0, shortc = 0, fault = 0, bad = 0, changed = 0;
    for (int k = 0; k < 3000; k++) {
        size_t len = lens[k % 7], mis = (k / 7) % 3 ? 0 : 100;
        long long off = (k * 7919LL * 4096) % (4 << 20) + (k % 2 ? 0 : 1);
        int writes = k % 5 == 2 || k % 5 == 4;
        if (writes && pread(fd, before, len, off) != (ssize_t)len) die("pread before");
        errno = 0;
        long long r;
        switch (k % 5) {
        case 0: r = pread(fd, ubuf + mis, len, off); break;
        case 1: lseek(fd, off, SEEK_SET); r = read(fd, ubuf + mis, len); break;
        case 2: r = pwrite(fd, ubuf + mis, len, off); break;
        case 3: { struct iovec v[2] = {{ubuf + mis, len / 2}, {ubuf + mis + len / 2, len - len / 2}}; r = preadv(fd, v, 2, off); break; }
        default: lseek(fd, off, SEEK_SET); r = write(fd, ubuf + mis, len); break;
        }
        int e = errno;
        /* the kernel's outcomes: all of it; the bytes up to where the copy met the unmapped
         * memory (anywhere: the unmapping can land in the middle of a copy); or EFAULT with
         * nothing moved. A write leaves the file past its count as it was. */
        int sane = (r > 0 && r <= (long long)len) || (r < 0 && e == EFAULT);
        if (sane && writes) {
            long long n = r > 0 ? r : 0;
            if (pread(fd, after, len, off) != (ssize_t)len) die("pread after");
            if (memcmp(after + n, before + n, len - n)) {
                changed++;
                fprintf(stderr, "changed past the count: op %d len %zu mis %zu off %lld: r=%lld errno=%s\n", k % 5, len, mis, off, r, errname(e));
            }
            /* put the bytes back so that the next reads and writes see the generated file */
            if (pwrite(fd, before, len, off) != (ssize_t)len) die("pwrite back");
        }
        if (!sane) {
            bad++;
            fprintf(stderr, "unexpected: op %d len %zu mis %zu off %lld: r=%lld errno=%s\n", k % 5, len, mis, off, r, errname(e));
        } else if (r == (long long)len) ok++;
        else if (r > 0) shortc++;
        else fault++;
    }
    stop = 1;
    pthread_join(t, NULL);
    /* counts vary from run to run; only whether every outcome was a kernel one is printed */
    printf("unmap: %s\n", bad ? "a result the kernel does not give" : "every result one the kernel gives");
    printf("unmap: the files past the counts %s\n", changed ? "changed" : "unchanged");
    fprintf(stderr, "unmap outcomes: whole %ld short %ld EFAULT %ld other %ld\n", ok, shortc, fault, bad);
    close(fd);
}

/* writes until the filesystem is full */
static void full(void)
{
    int fd = open_in("fill", O_RDWR | O_CREAT | O_TRUNC);
    char *b = xalloc(1 << 20, 0);
    gen_fill(8, 0, b, 1 << 20);
    long long acked = 0;
    int e = 0;
    for (;;) {
        ssize_t r = write(fd, b, 1 << 20);
        if (r < 0) { e = errno; break; }
        if (r == 0) break;
        acked += r;
    }
    int fsync_r = fsync(fd);
    struct stat st;
    fstat(fd, &st);
    printf("full: errno=%s size matches acknowledged: %s, fsync=%d\n", errname(e), st.st_size == acked ? "yes" : "no", fsync_r);
    /* every acknowledged byte is the program's */
    char *c = malloc(1 << 20);
    int same = 1;
    for (long long o = 0; o < acked; o += 1 << 20) {
        ssize_t n = pread(fd, c, 1 << 20, o);
        if (n <= 0 || memcmp(c, b + (o % (1 << 20)), n)) same = 0;
    }
    printf("full: contents %s\n", same ? "as written" : "DIFFER");
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc != 3) die("usage: errnos DIR calls|fsize|unmap|full");
    snprintf(dir, sizeof dir, "%s", argv[1]);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(argv[2], "calls")) {
        rw_calls();
        copy_calls();
    } else if (!strcmp(argv[2], "fsize")) fsize();
    else if (!strcmp(argv[2], "unmap")) unmap();
    else if (!strcmp(argv[2], "full")) full();
    else die("unknown mode %s", argv[2]);
    return 0;
}
