/* loader [options] PATH...
 *
 * Reads files the way a legacy data loader does and prints, per file on stdout,
 *   "<index> bytes=<n> fnv=<FNV-1a 64 of the bytes> calls=<read calls>"
 * Errors print "<index> error <call> <errno>" and exit 1.
 * Options:
 *   -m MODE  read    read() into a malloc'd buffer misaligned by +1 (default)
 *            pread   pread() at increasing offsets, malloc'd buffer +1
 *            readv   readv() with three iovecs (N/3, N/3+1, rest), misaligned
 *            preadv  preadv() like readv
 *            aligned read() into a posix_memalign(4096) buffer
 *            sread   read() into a static array at +1 (fortified builds: __read_chk)
 *            spread  pread() into a static array at +1 (__pread_chk/__pread64_chk)
 *            stdio   fopen/fread/fclose (glibc-internal calls)
 *   -b N     buffer (request) size, default 65536
 *   -o OFF   start offset (lseek for read/readv/aligned, first offset for pread)
 *   -l LEN   read at most LEN bytes per file
 *   -D       open with O_DIRECT (the program asks for it itself)
 *   -a DIR   open with openat(open(DIR), PATH) (PATH relative to DIR)
 *   -i FD    do not open: read the inherited descriptor FD (PATH is a label)
 *   -d       dump the bytes read to stdout instead of the summary lines
 *   -F       print the kernel's flags line of each fd on stderr:
 *            "FDINFO <path> fd=<n> flags:\t<octal>" (verbatim line of /proc/self/fdinfo)
 *   -G       print F_GETFL of each fd on stdout ("getfl=0<octal>")
 *   -w       after the first read, print "READY <pid>" on stderr and wait for a byte on stdin
 *   -P       print "PID <pid>" on stderr
 *   -k       fork after opening: the child reads the first half and _exit()s, the parent
 *            the rest (shared offset through the inherited descriptor; -m read/aligned)
 */
#include "common.h"
#include <sys/uio.h>
#include <sys/wait.h>

static const char *mode = "read";
static size_t bsz = 65536;
static long long start_off = 0, max_len = -1;
static int o_direct = 0, dump = 0, show_fdinfo = 0, show_getfl = 0, wait_stdin = 0, inherit_fd = -1, do_fork = 0;
static const char *atdir = NULL;

static char sarr[(1 << 20) + 1];
static long long read_some(int fd, char *buf, size_t want, long long *off, int *err)
{
    ssize_t n;
    errno = 0;
    if (!strcmp(mode, "sread") || !strcmp(mode, "spread")) {
        static volatile size_t cap = sizeof sarr - 1; /* opaque: keeps __read_chk */
        if (want > cap) want = cap;
        n = mode[1] == 'r' ? read(fd, sarr + 1, want) : pread(fd, sarr + 1, want, *off);
        if (n > 0) memcpy(buf, sarr + 1, (size_t)n);
        if (n > 0 && mode[1] == 'p') *off += n;
    } else if (!strcmp(mode, "read") || !strcmp(mode, "aligned")) {
        n = read(fd, buf, want);
    } else if (!strcmp(mode, "pread")) {
        n = pread(fd, buf, want, *off);
        if (n > 0) *off += n;
    } else {
        struct iovec iov[3];
        size_t a = want / 3, b = want / 3 + 1;
        if (a + b > want) b = want - a;
        /* three pieces of one buffer, plus misaligned starts */
        iov[0].iov_base = buf; iov[0].iov_len = a;
        iov[1].iov_base = buf + a; iov[1].iov_len = b;
        iov[2].iov_base = buf + a + b; iov[2].iov_len = want - a - b;
        if (!strcmp(mode, "readv")) n = readv(fd, iov, 3);
        else { n = preadv(fd, iov, 3, *off); if (n > 0) *off += n; }
    }
    *err = errno;
    return n;
}

static int load(int idx, const char *path)
{
    int fd;
    if (inherit_fd >= 0) {
        fd = inherit_fd;
    } else if (atdir) {
        int d = open(atdir, O_RDONLY | O_DIRECTORY);
        if (d < 0) { printf("%d error open-dir %s\n", idx, errname(errno)); return 1; }
        fd = openat(d, path, O_RDONLY | (o_direct ? O_DIRECT : 0));
        int e = errno;
        close(d);
        errno = e;
    } else {
        fd = open(path, O_RDONLY | (o_direct ? O_DIRECT : 0));
    }
    if (fd < 0) { printf("%d error open %s\n", idx, errname(errno)); return 1; }
    if (show_fdinfo) print_fdinfo(path, fd);
    if (show_getfl) printf("%d getfl=0%o\n", idx, fcntl(fd, F_GETFL));
    char *buf = !strcmp(mode, "aligned") ? xalloc(bsz, 0) : (char *)malloc(bsz + 1) + 1;
    long long off = start_off;
    if (start_off && strcmp(mode, "pread") && strcmp(mode, "preadv") && strcmp(mode, "spread")) {
        if (lseek(fd, start_off, SEEK_SET) < 0) { printf("%d error lseek %s\n", idx, errname(errno)); return 1; }
    }
    uint64_t h = FNV_INIT;
    long long total = 0, calls = 0;
    int first = 1;
    pid_t child = -1;
    if (do_fork) {
        child = fork();
        if (child == 0) {
            /* child: half of the file through the inherited description */
            struct stat st;
            fstat(fd, &st);
            long long half = st.st_size / 2, got = 0;
            uint64_t ch = FNV_INIT;
            while (got < half) {
                size_t want = bsz < (size_t)(half - got) ? bsz : (size_t)(half - got);
                ssize_t n = read(fd, buf, want);
                if (n <= 0) break;
                ch = fnv1a(ch, buf, (size_t)n);
                got += n;
            }
            printf("%d child bytes=%lld fnv=%016llx\n", idx, got, (unsigned long long)ch);
            fflush(stdout);
            _exit(0);
        }
        int stt;
        waitpid(child, &stt, 0);
        printf("%d parent-after-child pos=%lld\n", idx, (long long)lseek(fd, 0, SEEK_CUR));
    }
    for (;;) {
        size_t want = bsz;
        if (max_len >= 0 && (long long)want > max_len - total) want = (size_t)(max_len - total);
        if (want == 0) break;
        int err;
        long long n = read_some(fd, buf, want, &off, &err);
        calls++;
        if (n < 0) { printf("%d error %s %s\n", idx, mode, errname(err)); fflush(stdout); return 1; }
        if (n == 0) break;
        if (dump) fwrite(buf, 1, (size_t)n, stdout);
        h = fnv1a(h, buf, (size_t)n);
        total += n;
        if (first && wait_stdin) {
            fprintf(stderr, "READY %d\n", (int)getpid());
            fflush(stderr);
            char c;
            if (read(0, &c, 1) < 0) { /* ignore */ }
        }
        first = 0;
    }
    if (!dump) printf("%d bytes=%lld fnv=%016llx calls=%lld\n", idx, total, (unsigned long long)h, calls);
    if (show_fdinfo) print_fdinfo(path, fd);
    if (inherit_fd < 0) close(fd);
    return 0;
}

static int load_stdio(int idx, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { printf("%d error fopen %s\n", idx, errname(errno)); return 1; }
    char *buf = malloc(bsz);
    uint64_t h = FNV_INIT;
    long long total = 0;
    size_t n;
    if (start_off) fseek(f, start_off, SEEK_SET);
    while ((n = fread(buf, 1, bsz, f)) > 0) {
        if (dump) fwrite(buf, 1, n, stdout);
        h = fnv1a(h, buf, n);
        total += (long long)n;
    }
    if (ferror(f)) { printf("%d error fread\n", idx); return 1; }
    fclose(f);
    if (!dump) printf("%d bytes=%lld fnv=%016llx\n", idx, total, (unsigned long long)h);
    return 0;
}

int main(int argc, char **argv)
{
    int c;
    while ((c = getopt(argc, argv, "m:b:o:l:Da:i:dFGwPk")) != -1) {
        switch (c) {
        case 'm': mode = optarg; break;
        case 'b': bsz = strtoull(optarg, NULL, 0); break;
        case 'o': start_off = strtoll(optarg, NULL, 0); break;
        case 'l': max_len = strtoll(optarg, NULL, 0); break;
        case 'D': o_direct = 1; break;
        case 'a': atdir = optarg; break;
        case 'i': inherit_fd = atoi(optarg); break;
        case 'd': dump = 1; break;
        case 'F': show_fdinfo = 1; break;
        case 'G': show_getfl = 1; break;
        case 'w': wait_stdin = 1; break;
        case 'P': fprintf(stderr, "PID %d\n", (int)getpid()); break;
        case 'k': do_fork = 1; break;
        default: fprintf(stderr, "usage: loader [-m mode] [-b N] [-o OFF] [-l LEN] [-D] [-a DIR] [-i FD] [-d] [-F] [-G] [-w] [-P] [-k] PATH...\n"); return 2;
        }
    }
    if (optind >= argc) { fprintf(stderr, "loader: no PATH\n"); return 2; }
    if (bsz == 0) bsz = 1;
    long long rc = 0;
    for (int i = optind; i < argc; i++)
        rc |= !strcmp(mode, "stdio") ? load_stdio(i - optind, argv[i]) : load(i - optind, argv[i]);
    fflush(stdout);
    return (int)rc;
}
