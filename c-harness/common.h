/* common.h: helpers shared by the c-harness programs (header-only).
 * PRNG (splitmix64/xorshift, never rand()), FNV-1a 64, deterministic data generator,
 * errno names, and the kernel's view of a descriptor (/proc/self/fdinfo "flags:" line). */
#ifndef HARNESS_COMMON_H
#define HARNESS_COMMON_H
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define FNV_INIT 0xcbf29ce484222325ULL
static inline uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

typedef struct { uint64_t s; } rng_t;
static inline uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* uniform in [0, n) (n > 0) */
static inline uint64_t rng_below(rng_t *r, uint64_t n) { return n ? rng_next(r) % n : 0; }
static inline int rng_pct(rng_t *r, int pct) { return (int)rng_below(r, 100) < pct; }

/* The byte at position `off` of the data stream number `seed`: lets any reader verify data. */
static inline unsigned char gen_byte(uint64_t seed, uint64_t off)
{
    uint64_t z = (off / 8) * 0x9e3779b97f4a7c15ULL + seed * 0xd1b54a32d192ed03ULL + 1;
    z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 29;
    return (unsigned char)(z >> ((off % 8) * 8));
}
static inline void gen_fill(uint64_t seed, uint64_t off, void *buf, size_t n)
{
    unsigned char *b = (unsigned char *)buf;
    for (size_t i = 0; i < n; i++) b[i] = gen_byte(seed, off + i);
}

static inline const char *errname(int e)
{
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case EPIPE: return "EPIPE";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENXIO: return "ENXIO";
    case ETXTBSY: return "ETXTBSY";
    default: {
        static char b[32];
        snprintf(b, sizeof b, "E%d", e);
        return b;
    }
    }
}

static inline void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FATAL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (errno=%s)\n", errname(errno));
    va_end(ap);
    exit(99);
}

/* Copy the verbatim "flags:\t..." line of /proc/self/fdinfo/<fd> into out (no newline).
 * Uses only open/read/close (the shim must not mistake /proc for a data file). */
static inline int fdinfo_line(int fd, char *out, size_t outsz)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) { snprintf(out, outsz, "flags:\t?"); return -1; }
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0) { snprintf(out, outsz, "flags:\t?"); return -1; }
    buf[n] = 0;
    char *p = strstr(buf, "flags:");
    if (!p) { snprintf(out, outsz, "flags:\t?"); return -1; }
    char *e = strchr(p, '\n');
    if (e) *e = 0;
    snprintf(out, outsz, "%s", p);
    return 0;
}
static inline long fdinfo_flags(int fd)
{
    char l[256];
    if (fdinfo_line(fd, l, sizeof l) < 0) return -1;
    return strtol(l + 6, NULL, 8);
}
/* The lowest number the library's private descriptors may have: at or above the soft
 * RLIMIT_NOFILE, or in the few numbers just below it (libfd.rs). */
static inline long library_fd_floor(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0) return 1L << 30;
    long soft = (long)r.rlim_cur, zone = soft / 16;
    if (zone < 1) zone = 1;
    if (zone > 64) zone = 64;
    return soft - zone;
}

/* The library's private twin of the file fd is open on, with O_DIRECT, or -1: the kernel
 * shows the library's direct I/O there, never on the program's own description. */
static inline int direct_twin_of(int fd)
{
    struct stat a, b;
    long floor = library_fd_floor();
    if (fstat(fd, &a) < 0) return -1;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int found = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        int n = atoi(e->d_name);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || n == fd || n < floor) continue;
        if (fstat(n, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino
            && (fdinfo_flags(n) & O_DIRECT)) {
            found = n;
            break;
        }
    }
    closedir(d);
    return found;
}

/* "FDINFO <label> fd=<fd> <verbatim flags line>[ twin:\t<octal>]" on stderr: the kernel's
 * truth for the tests, for the program's descriptor and for the twin that carries its direct
 * I/O if there is one. */
static inline void print_fdinfo(const char *label, int fd)
{
    char l[256];
    fdinfo_line(fd, l, sizeof l);
    int t = direct_twin_of(fd);
    if (t >= 0)
        fprintf(stderr, "FDINFO %s fd=%d %s twin:\t%lo\n", label, fd, l, (unsigned long)fdinfo_flags(t));
    else
        fprintf(stderr, "FDINFO %s fd=%d %s\n", label, fd, l);
    fflush(stderr);
}

/* The same, only when HARNESS_FDINFO is set in the environment. */
static inline void maybe_fdinfo(const char *label, int fd)
{
    if (getenv("HARNESS_FDINFO")) print_fdinfo(label, fd);
}

/* Aligned allocation plus a deliberate misalignment. */
static inline void *xalloc(size_t n, size_t mis)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, n + mis + 4096) != 0) die("posix_memalign");
    return (char *)p + mis;
}

static inline int write_all(int fd, const void *b, size_t n)
{
    const char *p = (const char *)b;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static inline uint64_t file_hash(const char *path, long long *size_out)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) { *size_out = -1; return 0; }
    size_t bs = 65537;
    char *b = (char *)malloc(bs);
    uint64_t h = FNV_INIT;
    long long tot = 0;
    ssize_t n;
    while ((n = read(fd, b, bs)) > 0) { h = fnv1a(h, b, (size_t)n); tot += n; }
    if (n < 0) tot = -1000 - errno;
    free(b);
    close(fd);
    *size_out = tot;
    return h;
}
#endif
