/* bload: the C loader of the benchmark (bench/bench.py runs it; not a test program).
 *
 *   bload [-m seq|rand|fread|stride|hdrjump|chunks] [-b BYTES] [-A] [-D] [-F] [-t THREADS]
 *         [-T SECS] [-L BYTES] [-n COUNT] [-S BYTES] [-C BYTES] FILE...
 *
 *   -m seq     read() each file front to back (default)
 *      rand    pread() of -b bytes at random 4096-aligned offsets of random files, -n of them
 *      fread   fopen()/fread()/fclose() each file (glibc stdio, -b bytes per fread)
 *      stride  each file: read() -b bytes, lseek() -S bytes further (default 1 MiB), to its end
 *      hdrjump each file: read() a 128-byte header at offset 0 (4096 bytes with -D, which
 *              cannot read less), then -n / FILES pread()s of -b bytes at random 4096-aligned
 *              offsets of that file
 *      chunks  the files cut in chunks of -C bytes (default 256 KiB), in shuffled order, each
 *              chunk read with read()s of -b bytes after an lseek() to its start; -n chunks
 *   -b N      request size (default 65536)
 *   -A        posix_memalign(4096) buffers; default malloc(N) (what most loaders do)
 *   -D        open with O_DIRECT (the program asks for it itself: native direct I/O)
 *   -F        seq: read each file whole into a fresh buffer of its size, freed afterwards, as
 *             numpy.load does (page-aligned, MADV_HUGEPAGE like numpy's large arrays); the
 *             kernel must zero every new page before the data lands in it
 *   -t N      N threads; thread i reads files i, i+N, ... (seq and fread)
 *   -T S      stop after S seconds (0: no limit)
 *   -L N      stop after N bytes (0: no limit)
 * Prints "bytes=<read> secs=<elapsed I/O time> calls=<read calls>" and exits 0, or an
 * error line on stderr and exits 1. Data is touched (summed) like a consumer would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *mode = "seq";
static size_t bsz = 65536;
static int aligned = 0, odirect = 0, fresh = 0, nthreads = 1;
static double tmax = 0;
static long long lmax = 0, rcount = 1000, skip = 1 << 20, chunk = 256 << 10;
static char **files;
static int nfiles;
static double t0;
static atomic_llong total_bytes, total_calls;
static atomic_int stop_flag, failed;
static volatile uint64_t sink;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *getbuf(void)
{
    void *p = NULL;
    if (aligned) {
        if (posix_memalign(&p, 4096, bsz)) p = NULL;
    } else {
        p = malloc(bsz);
    }
    if (!p) { fprintf(stderr, "bload: out of memory\n"); exit(1); }
    memset(p, 0, bsz);
    return p;
}

static int over(long long n)
{
    long long b = atomic_fetch_add(&total_bytes, n) + n;
    atomic_fetch_add(&total_calls, 1);
    if ((lmax && b >= lmax) || (tmax > 0 && now() - t0 >= tmax)) atomic_store(&stop_flag, 1);
    return atomic_load(&stop_flag);
}

static void consume(const char *buf, ssize_t n)
{
    uint64_t s = 0;
    for (ssize_t i = 0; i < n; i += 4096) s += (unsigned char)buf[i];
    sink += s;
}

static void fail(const char *what, const char *path)
{
    fprintf(stderr, "bload: %s %s: %s\n", what, path, strerror(errno));
    atomic_store(&failed, 1);
    atomic_store(&stop_flag, 1);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    char *buf = getbuf();
    for (int i = id; i < nfiles && !atomic_load(&stop_flag); i += nthreads) {
        if (!strcmp(mode, "fread")) {
            FILE *f = fopen(files[i], "rb");
            if (!f) { fail("fopen", files[i]); break; }
            size_t n;
            while ((n = fread(buf, 1, bsz, f)) > 0) {
                consume(buf, (ssize_t)n);
                if (over((long long)n)) break;
            }
            if (ferror(f)) fail("fread", files[i]);
            fclose(f);
            continue;
        }
        int fd = open(files[i], O_RDONLY | (odirect ? O_DIRECT : 0));
        if (fd < 0) { fail("open", files[i]); break; }
        char *whole = NULL;
        size_t cap = 0, at = 0;
        if (fresh) {
            struct stat st;
            if (fstat(fd, &st) < 0) { fail("fstat", files[i]); close(fd); break; }
            cap = ((size_t)st.st_size + bsz - 1) / bsz * bsz + bsz;
            if (posix_memalign((void **)&whole, 4096, cap)) { fail("posix_memalign", files[i]); close(fd); break; }
            madvise(whole, cap, MADV_HUGEPAGE);
        }
        for (;;) {
            char *dst = fresh ? whole + at : buf;
            ssize_t n = read(fd, dst, fresh ? (cap - at < bsz ? cap - at : bsz) : bsz);
            if (n < 0) { if (errno == EINTR) continue; fail("read", files[i]); break; }
            if (n == 0) break;
            consume(dst, n);
            at += (size_t)n;
            if (over(n)) break;
        }
        free(whole);
        close(fd);
    }
    return NULL;
}

static void run_rand(void)
{
    char *buf = getbuf();
    int *fds = calloc((size_t)nfiles, sizeof *fds);
    long long *sizes = calloc((size_t)nfiles, sizeof *sizes);
    for (int i = 0; i < nfiles; i++) {
        fds[i] = open(files[i], O_RDONLY | (odirect ? O_DIRECT : 0));
        if (fds[i] < 0) { fail("open", files[i]); return; }
        struct stat st;
        fstat(fds[i], &st);
        sizes[i] = st.st_size;
    }
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (long long k = 0; k < rcount && !atomic_load(&stop_flag); k++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        int i = (int)(s % (uint64_t)nfiles);
        long long slots = (sizes[i] - (long long)bsz) / 4096;
        if (slots < 1) slots = 1;
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        long long off = (long long)(s % (uint64_t)slots) * 4096;
        ssize_t n = pread(fds[i], buf, bsz, off);
        if (n < 0) { if (errno == EINTR) continue; fail("pread", files[i]); break; }
        consume(buf, n);
        over(n);
    }
    for (int i = 0; i < nfiles; i++) close(fds[i]);
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* read() of exactly -b bytes (or to end of file) into buf, counted; -1 on error, 0 at EOF */
static ssize_t read_counted(int fd, char *buf, size_t n, const char *path)
{
    for (;;) {
        ssize_t r = read(fd, buf, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { fail("read", path); return -1; }
        if (r > 0) { consume(buf, r); over(r); }
        return r;
    }
}

static void run_stride(void)
{
    char *buf = getbuf();
    for (int i = 0; i < nfiles && !atomic_load(&stop_flag); i++) {
        int fd = open(files[i], O_RDONLY | (odirect ? O_DIRECT : 0));
        if (fd < 0) { fail("open", files[i]); return; }
        while (!atomic_load(&stop_flag)) {
            ssize_t r = read_counted(fd, buf, bsz, files[i]);
            if (r <= 0) break;
            if (lseek(fd, skip, SEEK_CUR) < 0) { fail("lseek", files[i]); break; }
        }
        close(fd);
    }
}

static void run_hdrjump(void)
{
    char *buf = getbuf();
    long long per = rcount / nfiles > 0 ? rcount / nfiles : 1;
    for (int i = 0; i < nfiles && !atomic_load(&stop_flag); i++) {
        int fd = open(files[i], O_RDONLY | (odirect ? O_DIRECT : 0));
        if (fd < 0) { fail("open", files[i]); return; }
        struct stat st;
        fstat(fd, &st);
        if (read_counted(fd, buf, odirect ? 4096 : 128, files[i]) < 0) { close(fd); return; }
        long long slots = (st.st_size - (long long)bsz) / 4096;
        if (slots < 1) slots = 1;
        for (long long k = 0; k < per && !atomic_load(&stop_flag); k++) {
            long long off = (long long)(rnd() % (uint64_t)slots) * 4096;
            ssize_t n = pread(fd, buf, bsz, off);
            if (n < 0) { if (errno == EINTR) continue; fail("pread", files[i]); break; }
            consume(buf, n);
            over(n);
        }
        close(fd);
    }
}

static void run_chunks(void)
{
    char *buf = getbuf();
    int *fds = calloc((size_t)nfiles, sizeof *fds);
    long long total = 0, *first = calloc((size_t)nfiles + 1, sizeof *first);
    for (int i = 0; i < nfiles; i++) {
        fds[i] = open(files[i], O_RDONLY | (odirect ? O_DIRECT : 0));
        if (fds[i] < 0) { fail("open", files[i]); return; }
        struct stat st;
        fstat(fds[i], &st);
        first[i] = total;
        total += st.st_size / chunk;
    }
    first[nfiles] = total;
    if (total < 1) return;
    long long *order = malloc((size_t)total * sizeof *order);
    for (long long k = 0; k < total; k++) order[k] = k;
    for (long long k = total - 1; k > 0; k--) {
        long long j = (long long)(rnd() % (uint64_t)(k + 1)), t = order[k];
        order[k] = order[j];
        order[j] = t;
    }
    for (long long k = 0; k < total && k < rcount && !atomic_load(&stop_flag); k++) {
        int i = 0;
        while (order[k] >= first[i + 1]) i++;
        long long off = (order[k] - first[i]) * chunk;
        if (lseek(fds[i], off, SEEK_SET) < 0) { fail("lseek", files[i]); break; }
        for (long long done = 0; done < chunk && !atomic_load(&stop_flag);) {
            size_t n = (size_t)(chunk - done) < bsz ? (size_t)(chunk - done) : bsz;
            ssize_t r = read_counted(fds[i], buf, n, files[i]);
            if (r <= 0) break;
            done += r;
        }
    }
    for (int i = 0; i < nfiles; i++) close(fds[i]);
}

int main(int argc, char **argv)
{
    int c;
    while ((c = getopt(argc, argv, "m:b:ADFt:T:L:n:S:C:")) != -1) {
        switch (c) {
        case 'm': mode = optarg; break;
        case 'b': bsz = strtoull(optarg, NULL, 0); break;
        case 'A': aligned = 1; break;
        case 'D': odirect = 1; break;
        case 'F': fresh = 1; break;
        case 't': nthreads = atoi(optarg); break;
        case 'T': tmax = atof(optarg); break;
        case 'L': lmax = strtoll(optarg, NULL, 0); break;
        case 'n': rcount = strtoll(optarg, NULL, 0); break;
        case 'S': skip = strtoll(optarg, NULL, 0); break;
        case 'C': chunk = strtoll(optarg, NULL, 0); break;
        default: fprintf(stderr, "usage: see the header of bench/src/bload.c\n"); return 2;
        }
    }
    files = argv + optind;
    nfiles = argc - optind;
    if (nfiles < 1 || bsz < 1 || nthreads < 1) { fprintf(stderr, "bload: bad arguments\n"); return 2; }
    t0 = now();
    if (!strcmp(mode, "rand")) {
        run_rand();
    } else if (!strcmp(mode, "stride")) {
        run_stride();
    } else if (!strcmp(mode, "hdrjump")) {
        run_hdrjump();
    } else if (!strcmp(mode, "chunks")) {
        if (chunk < 1) { fprintf(stderr, "bload: bad -C\n"); return 2; }
        run_chunks();
    } else if (nthreads == 1) {
        worker(0);
    } else {
        pthread_t th[256];
        if (nthreads > 256) nthreads = 256;
        for (int i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
        for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    }
    double el = now() - t0;
    if (atomic_load(&failed)) return 1;
    printf("bytes=%lld secs=%.6f calls=%lld\n", (long long)atomic_load(&total_bytes), el,
           (long long)atomic_load(&total_calls));
    return 0;
}
