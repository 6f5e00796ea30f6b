/* mtstress PATH THREADS ITERS [RECSZ]
 *
 * Many threads on ONE descriptor (open O_RDWR), verifying every byte:
 *   1. the main thread writes SIZE = 4 MiB + 4097 bytes of known data (gen_byte seed 1)
 *      with write() in odd chunks;
 *   2. read phase: every thread pread()s ITERS ranges into misaligned buffers: half of them
 *      overlapping random ranges anywhere (also crossing the end of the file), half the
 *      thread's own disjoint stripe; every byte is checked;
 *   3. mixed phase: every thread pwrite()s its disjoint records (RECSZ bytes, default 4099,
 *      record i belongs to thread i % THREADS, scrambled order, new data seed 2) while it
 *      and the others pread() random overlapping ranges: each byte read must be the old or
 *      the new data of that position (records of neighbours share sectors);
 *   4. after joining, the threads pread() the whole file in disjoint odd chunks: it must
 *      be the new data where records were written and the old data elsewhere, and the size
 *      unchanged.
 * stdout: "OK threads=<t> size=<n> read_bytes=<n> writes=<n> write_bytes=<n>"
 * (deterministic: fixed by the arguments) or "BAD ..." lines; exit 0 only when
 * everything verified. stderr: "FDINFO main fd=<n> flags:\t<octal>" (print_fdinfo).
 */
#include "common.h"
#include <pthread.h>

#define SIZE (4LL * 1048576 + 4097)
#define MAXR (300000)

static int fd;
static int nthreads;
static long long iters, recsz, nrec;
static pthread_barrier_t bar;
static volatile int bad;
static long long tot_reads, tot_read_bytes, tot_writes, tot_write_bytes;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static unsigned char oldb(long long off) { return gen_byte(1, (uint64_t)off); }
static unsigned char newb(long long off) { return gen_byte(2, (uint64_t)off); }
static int in_record_area(long long off) { return off < nrec * recsz; }

static void report(const char *what, long long off, long long len, long long ret, int e)
{
    pthread_mutex_lock(&mu);
    if (bad < 20) printf("BAD %s off=%lld len=%lld ret=%lld %s\n", what, off, len, ret, errname(e));
    bad++;
    pthread_mutex_unlock(&mu);
}

/* check=0: old data, 1: old or new, 2: final (new inside records, old outside) */
static void check_range(const char *what, const unsigned char *b, long long off, long long n, int check)
{
    for (long long k = 0; k < n; k++) {
        long long o = off + k;
        unsigned char ob = oldb(o), nb = newb(o), g = b[k];
        int ok;
        if (check == 0 || !in_record_area(o)) ok = g == ob;
        else if (check == 1) ok = g == ob || g == nb;
        else ok = g == nb;
        if (!ok) {
            char w[96];
            snprintf(w, sizeof w, "%s byte at %lld is %02x (old %02x new %02x)", what, o, g, ob, nb);
            report(w, off, n, k, 0);
            return;
        }
    }
}

static long long do_pread(unsigned char *buf, long long off, long long len, int check, long long *reads, long long *bytes)
{
    long long got = 0;
    while (got < len) {
        ssize_t r = pread(fd, buf + got, (size_t)(len - got), off + got);
        (*reads)++;
        if (r < 0) {
            if (errno == EINTR) continue;
            report("pread", off, len, r, errno);
            return -1;
        }
        if (r == 0) break;
        got += r;
    }
    *bytes += got;
    long long expect = off >= SIZE ? 0 : (off + len > SIZE ? SIZE - off : len);
    if (got != expect) report("pread short", off, len, got, 0);
    check_range("pread", buf, off, got, check);
    return got;
}

static void *worker(void *arg)
{
    long long t = (long long)(intptr_t)arg;
    rng_t r = {.s = (uint64_t)t * 7919 + 17};
    unsigned char *mem = xalloc(MAXR + 64, 0);
    long long reads = 0, rbytes = 0, writes = 0, wbytes = 0;

    /* phase 2: reads only */
    pthread_barrier_wait(&bar);
    long long stripe = SIZE / nthreads;
    for (long long i = 0; i < iters; i++) {
        unsigned char *b = mem + rng_below(&r, 64);
        long long off, len = 1 + (long long)rng_below(&r, MAXR - 64);
        if (i % 2) {
            off = (long long)rng_below(&r, SIZE + 5000);
        } else {
            off = t * stripe + (long long)rng_below(&r, (uint64_t)stripe);
            if (off + len > (t + 1) * stripe) len = (t + 1) * stripe - off;
            if (len <= 0) len = 1;
        }
        do_pread(b, off, len, 0, &reads, &rbytes);
    }

    /* phase 3: disjoint record writes, mixed with overlapping reads */
    pthread_barrier_wait(&bar);
    long long mine = 0;
    for (long long i = t; i < nrec; i += nthreads) mine++;
    long long *order = malloc(sizeof(long long) * (size_t)(mine + 1));
    long long m = 0;
    for (long long i = t; i < nrec; i += nthreads) order[m++] = i;
    for (long long i = m - 1; i > 0; i--) {
        long long j = (long long)rng_below(&r, (uint64_t)i + 1), x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    unsigned char *wb = xalloc((size_t)recsz + 64, 0);
    for (long long x = 0; x < m; x++) {
        long long rec = order[x], off = rec * recsz;
        unsigned char *b = wb + (x % 7) * 5 + 1;
        for (long long k = 0; k < recsz; k++) b[k] = newb(off + k);
        ssize_t w = pwrite(fd, b, (size_t)recsz, off);
        writes++;
        if (w != recsz) report("pwrite", off, recsz, w, errno);
        else wbytes += w;
        if (x % 3 == 0) {
            long long len = 1 + (long long)rng_below(&r, 3 * recsz), ro = (long long)rng_below(&r, SIZE);
            if (ro + len > SIZE) len = SIZE - ro;
            do_pread(mem + rng_below(&r, 64), ro, len, 1, &reads, &rbytes);
        }
    }

    /* phase 4: final verification of disjoint chunks */
    pthread_barrier_wait(&bar);
    long long chunk = 100003;
    for (long long off = t * chunk; off < SIZE; off += chunk * nthreads) {
        long long len = off + chunk > SIZE ? SIZE - off : chunk;
        do_pread(mem + 3, off, len, 2, &reads, &rbytes);
    }
    pthread_mutex_lock(&mu);
    tot_reads += reads;
    tot_read_bytes += rbytes;
    tot_writes += writes;
    tot_write_bytes += wbytes;
    pthread_mutex_unlock(&mu);
    free(order);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: mtstress PATH THREADS ITERS [RECSZ]\n");
        return 2;
    }
    nthreads = atoi(argv[2]);
    iters = atoll(argv[3]);
    recsz = argc > 4 ? atoll(argv[4]) : 4099;
    if (nthreads < 1 || nthreads > 64 || recsz < 1) return 2;
    nrec = (SIZE - 1000) / recsz; /* records stop short of the end: the tail keeps old data */
    fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open %s", argv[1]);
    print_fdinfo("main", fd);
    unsigned char *b = xalloc(1 << 20, 1);
    long long off = 0;
    static const long long ch[] = {4097, 1000003, 65536, 1, 333331};
    for (int i = 0; off < SIZE; i++) {
        long long n = ch[i % 5];
        if (n > SIZE - off) n = SIZE - off;
        if (n > (1 << 20)) n = 1 << 20;
        for (long long k = 0; k < n; k++) b[k] = oldb(off + k);
        if (write_all(fd, b, (size_t)n)) die("write");
        off += n;
    }
    pthread_barrier_init(&bar, NULL, (unsigned)nthreads);
    pthread_t th[64];
    for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    struct stat st;
    fstat(fd, &st);
    if (st.st_size != SIZE) report("size", 0, SIZE, st.st_size, 0);
    close(fd);
    if (bad) {
        printf("BAD total %d problems\n", bad);
        return 1;
    }
    /* reads are not deterministic in number (short reads retried), bytes are */
    printf("OK threads=%d size=%lld read_bytes=%lld writes=%lld write_bytes=%lld\n", nthreads, (long long)SIZE,
           tot_read_bytes, tot_writes, tot_write_bytes);
    return 0;
}
