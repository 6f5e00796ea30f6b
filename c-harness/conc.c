/* conc MODE PATH [args]: concurrency checks. Each mode verifies its own result and prints a
 * deterministic summary ("OK ..." or "BAD ..." lines); exit 0 only when everything checked.
 *
 *   conc pwrite-threads PATH T RECSZ NREC [own]
 *        T threads pwrite() interleaved disjoint records (record i by thread i%T, at
 *        i*RECSZ, in a scrambled order), RECSZ odd so neighbours share sectors; with
 *        "own" each thread opens its own descriptor. Checks every byte afterwards.
 *   conc pwrite-procs PATH P RECSZ NREC
 *        Same with P forked processes, each opening the file itself.
 *   conc append-procs PATH P NREC RECSZ
 *        P processes each open PATH with O_WRONLY|O_APPEND and write() NREC self-describing
 *        records of varied odd sizes around RECSZ. Checks the file is exactly the
 *        concatenation of all records, each present exactly once and intact.
 *   conc append-threads PATH T NREC RECSZ
 *        T threads share one O_APPEND descriptor; same check.
 *   conc sharedfd-read PATH T RECSZ NREC
 *        Creates NREC records; T threads share one descriptor and read() RECSZ at a time
 *        until EOF. Every record must be read exactly once, whole (offset atomicity).
 *   conc sharedfd-write PATH T RECSZ NREC
 *        T threads share one O_WRONLY descriptor (no O_APPEND) and write() records.
 *        The file must hold every record exactly once, none overwritten.
 *   conc overlap-pread PATH T ITERS
 *        Creates a 4 MiB+123 file of known data; T threads pread() random overlapping
 *        misaligned ranges ITERS times each and verify every byte.
 *   conc fork-storm PATH T ITERS
 *        T threads do unaligned pread/pwrite on a shared descriptor while the main thread
 *        forks ITERS children that each do I/O on the inherited descriptor and on a fresh
 *        one, then _exit. Must not deadlock (alarm 100 s) and every byte must verify.
 * With HARNESS_FDINFO set, the main descriptor's kernel flags go to stderr
 * ("FDINFO main fd=<n> flags:\t<octal>").
 * Each mode is one mode_* function; main() dispatches through the table MODES (name, function,
 * arguments needed, usage). Exit 2: no MODE/PATH, an unknown mode, or a mode given too few
 * arguments (its usage line goes to stderr).
 */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/uio.h>
#include <sys/wait.h>

static const char *path;
static int shared_fd = -1;
static pthread_barrier_t barrier;
static int nthreads;
static long long recsz, nrec, iters;
static int own_fd;

/* ---------- pwrite of interleaved records ---------- */
static unsigned char rec_byte(long long i, long long k) { return gen_byte(0x77, (uint64_t)(i * recsz + k)); }
static void write_records(int fd, long long who, long long nwho)
{
    /* scrambled order of this worker's records */
    long long mine = 0;
    for (long long i = who; i < nrec; i += nwho) mine++;
    long long *order = malloc(sizeof(long long) * (size_t)(mine ? mine : 1));
    long long m = 0;
    for (long long i = who; i < nrec; i += nwho) order[m++] = i;
    rng_t r = {.s = (uint64_t)who * 977 + 1};
    for (long long i = m - 1; i > 0; i--) {
        long long j = (long long)rng_below(&r, (uint64_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    char *buf = (char *)malloc((size_t)recsz + 8) + 5;
    for (long long x = 0; x < m; x++) {
        long long i = order[x];
        for (long long k = 0; k < recsz; k++) buf[k] = (char)rec_byte(i, k);
        ssize_t w = pwrite(fd, buf, (size_t)recsz, i * recsz);
        if (w != recsz) { printf("BAD pwrite rec=%lld ret=%zd %s\n", i, w, errname(errno)); fflush(stdout); }
    }
    free(order);
}
static void *pw_thread(void *arg)
{
    long long t = (long long)(intptr_t)arg;
    int fd = own_fd ? open(path, O_WRONLY) : shared_fd;
    if (fd < 0) die("open");
    if (own_fd && t == 0) maybe_fdinfo("thread-own", fd);
    pthread_barrier_wait(&barrier);
    write_records(fd, t, nthreads);
    if (own_fd) close(fd);
    return NULL;
}
static int verify_records(void)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    long long bad = 0, firstbad = -1;
    char *buf = malloc((size_t)recsz);
    for (long long i = 0; i < nrec; i++) {
        ssize_t n = pread(fd, buf, (size_t)recsz, i * recsz);
        if (n != recsz) { bad++; if (firstbad < 0) firstbad = i; continue; }
        for (long long k = 0; k < recsz; k++)
            if ((unsigned char)buf[k] != rec_byte(i, k)) { bad++; if (firstbad < 0) firstbad = i; break; }
    }
    close(fd);
    if (bad || st.st_size != nrec * recsz) {
        printf("BAD records=%lld bad=%lld first_bad=%lld size=%lld expected=%lld\n", nrec, bad, firstbad, (long long)st.st_size, nrec * recsz);
        return 1;
    }
    printf("OK records=%lld size=%lld\n", nrec, (long long)st.st_size);
    return 0;
}

/* ---------- self-describing records for append / shared-offset writes ---------- */
/* record: 'R' 'C' who(2) seq(4) len(4) payload... ; total length len */
static size_t mkrec(char *b, int who, long long seq, size_t base)
{
    size_t len = base + (size_t)((seq * 7 + who * 3) % 29) * 13; /* varied, mostly odd */
    if (len < 16) len = 16;
    b[0] = 'R'; b[1] = 'C';
    b[2] = (char)(who & 0xff); b[3] = (char)(who >> 8);
    for (int i = 0; i < 4; i++) b[4 + i] = (char)((seq >> (8 * i)) & 0xff);
    for (int i = 0; i < 4; i++) b[8 + i] = (char)((len >> (8 * i)) & 0xff);
    for (size_t k = 12; k < len; k++) b[k] = (char)gen_byte((uint64_t)who * 100003 + (uint64_t)seq, k);
    return len;
}
static int verify_tiled(int nwho, long long nseq, size_t base)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    size_t sz = (size_t)st.st_size;
    char *d = malloc(sz + 1);
    size_t got = 0;
    while (got < sz) {
        ssize_t n = read(fd, d + got, sz - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    unsigned char *seen = calloc((size_t)nwho * (size_t)nseq, 1);
    char *tmp = malloc(base + 29 * 13 + 64);
    size_t pos = 0;
    long long recs = 0, dup = 0, corrupt = 0;
    while (pos + 12 <= got) {
        if (d[pos] != 'R' || d[pos + 1] != 'C') { corrupt++; break; }
        int who = (unsigned char)d[pos + 2] | ((unsigned char)d[pos + 3] << 8);
        long long seq = 0;
        size_t len = 0;
        for (int i = 0; i < 4; i++) seq |= (long long)(unsigned char)d[pos + 4 + i] << (8 * i);
        for (int i = 0; i < 4; i++) len |= (size_t)(unsigned char)d[pos + 8 + i] << (8 * i);
        if (who >= nwho || seq >= nseq || pos + len > got) { corrupt++; break; }
        size_t l2 = mkrec(tmp, who, seq, base);
        if (l2 != len || memcmp(tmp, d + pos, len)) { corrupt++; break; }
        if (seen[who * nseq + seq]++) dup++;
        recs++;
        pos += len;
    }
    long long missing = 0;
    for (long long i = 0; i < nwho * nseq; i++) if (!seen[i]) missing++;
    if (corrupt || dup || missing || pos != got || got != sz) {
        printf("BAD records_found=%lld expected=%lld missing=%lld duplicated=%lld corrupt_at=%zu of %zu\n",
               recs, (long long)nwho * nseq, missing, dup, corrupt ? pos : (size_t)0, sz);
        return 1;
    }
    printf("OK records=%lld exact tiling\n", recs);
    return 0;
}
static void *app_thread(void *arg)
{
    int who = (int)(intptr_t)arg;
    char *b = (char *)malloc(recsz + 29 * 13 + 64) + 1;
    pthread_barrier_wait(&barrier);
    for (long long s = 0; s < nrec; s++) {
        size_t l = mkrec(b, who, s, (size_t)recsz);
        ssize_t w = write(shared_fd, b, l);
        if (w != (ssize_t)l) { printf("BAD write ret=%zd want=%zu %s\n", w, l, errname(errno)); fflush(stdout); }
    }
    return NULL;
}

/* ---------- shared-offset read ---------- */
static long long *read_count;
static pthread_mutex_t cnt_mu = PTHREAD_MUTEX_INITIALIZER;
static long long read_bad;
static void *sr_thread(void *arg)
{
    (void)arg;
    char *buf = (char *)malloc((size_t)recsz + 8) + 1;
    pthread_barrier_wait(&barrier);
    for (;;) {
        ssize_t n = read(shared_fd, buf, (size_t)recsz);
        if (n == 0) break;
        pthread_mutex_lock(&cnt_mu);
        if (n != recsz) { read_bad++; pthread_mutex_unlock(&cnt_mu); if (n < 0) break; continue; }
        long long idx = -1;
        memcpy(&idx, buf, sizeof idx);
        int ok = idx >= 0 && idx < nrec;
        for (long long k = 8; ok && k < recsz; k++)
            if ((unsigned char)buf[k] != gen_byte((uint64_t)idx + 5, (uint64_t)k)) ok = 0;
        if (ok) read_count[idx]++;
        else read_bad++;
        pthread_mutex_unlock(&cnt_mu);
    }
    return NULL;
}

/* ---------- overlapping preads ---------- */
#define OV_SIZE (4 * 1048576 + 123)
static long long ov_bad;
static void *ov_thread(void *arg)
{
    rng_t r = {.s = (uint64_t)(intptr_t)arg * 31 + 7};
    char *raw = malloc(300000 + 4096);
    pthread_barrier_wait(&barrier);
    for (long long it = 0; it < iters; it++) {
        long long off = (long long)rng_below(&r, OV_SIZE + 5000);
        if (rng_pct(&r, 30)) off &= ~4095LL;
        size_t len = (size_t)rng_below(&r, 262144);
        if (rng_pct(&r, 30)) len = (len + 4095) & ~(size_t)4095;
        char *b = raw + (rng_pct(&r, 30) ? (4096 - ((uintptr_t)raw & 4095)) % 4096 : rng_below(&r, 4096));
        ssize_t n = pread(shared_fd, b, len, off);
        long long expect = off >= OV_SIZE ? 0 : (OV_SIZE - off < (long long)len ? OV_SIZE - off : (long long)len);
        int ok = n == expect;
        for (ssize_t k = 0; ok && k < n; k++)
            if ((unsigned char)b[k] != gen_byte(9, (uint64_t)(off + k))) ok = 0;
        if (!ok) __atomic_add_fetch(&ov_bad, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* ---------- fork storm ---------- */
#define FS_SIZE (1048576 + 77)
static volatile int fs_stop;
static long long fs_bad;
static void *fs_thread(void *arg)
{
    rng_t r = {.s = (uint64_t)(intptr_t)arg * 131 + 3};
    char *raw = malloc(70000);
    while (!fs_stop) {
        long long off = (long long)rng_below(&r, FS_SIZE);
        size_t len = 1 + (size_t)rng_below(&r, 65536);
        if (off + (long long)len > FS_SIZE) len = (size_t)(FS_SIZE - off);
        char *b = raw + rng_below(&r, 3);
        if (rng_pct(&r, 50)) {
            ssize_t n = pread(shared_fd, b, len, off);
            int ok = n == (ssize_t)len;
            for (ssize_t k = 0; ok && k < n; k++)
                if ((unsigned char)b[k] != gen_byte(11, (uint64_t)(off + k))) ok = 0;
            if (!ok) __atomic_add_fetch(&fs_bad, 1, __ATOMIC_RELAXED);
        } else {
            /* rewrite identical bytes: content must never change */
            gen_fill(11, (uint64_t)off, b, len);
            if (pwrite(shared_fd, b, len, off) != (ssize_t)len) __atomic_add_fetch(&fs_bad, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static void make_file(uint64_t seed, long long size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("create %s", path);
    char *b = malloc(1 << 20);
    for (long long o = 0; o < size;) {
        size_t n = size - o < (1 << 20) ? (size_t)(size - o) : (1 << 20);
        gen_fill(seed, (uint64_t)o, b, n);
        if (write_all(fd, b, n) < 0) die("write");
        o += (long long)n;
    }
    free(b);
    fsync(fd);
    close(fd);
}

static void on_alarm(int s) { (void)s; static const char m[] = "BAD timeout (deadlock?)\n"; if (write(1, m, sizeof m - 1)) {} _exit(3); }

/* ---------- the modes: one function each, dispatched through MODES below ---------- */

/* start nthreads threads of fn (argument: the thread's index) behind one barrier, and join them */
static void run_threads(void *(*fn)(void *))
{
    pthread_t th[64];
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    for (long long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, fn, (void *)(intptr_t)t);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
}

/* pwrite-threads and pwrite-procs: PATH N RECSZ NREC [own]; creates PATH, returns its descriptor */
static int pwrite_setup(int argc, char **argv)
{
    nthreads = atoi(argv[3]);
    recsz = atoll(argv[4]);
    nrec = atoll(argv[5]);
    own_fd = argc > 6 && !strcmp(argv[6], "own");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    maybe_fdinfo("main", fd);
    return fd;
}

static int mode_pwrite_threads(int argc, char **argv)
{
    shared_fd = pwrite_setup(argc, argv);
    run_threads(pw_thread);
    close(shared_fd);
    return verify_records();
}

static int mode_pwrite_procs(int argc, char **argv)
{
    close(pwrite_setup(argc, argv));
    for (int p = 0; p < nthreads; p++) {
        if (fork() == 0) {
            int f = open(path, O_WRONLY);
            if (f < 0) die("open");
            write_records(f, p, nthreads);
            close(f);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    return verify_records();
}

/* append-procs and append-threads: PATH N NREC RECSZ; creates PATH empty */
static void append_setup(char **argv)
{
    nthreads = atoi(argv[3]);
    nrec = atoll(argv[4]);
    recsz = atoll(argv[5]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    close(fd);
}

static int mode_append_procs(int argc, char **argv)
{
    (void)argc;
    append_setup(argv);
    for (int p = 0; p < nthreads; p++) {
        if (fork() == 0) {
            shared_fd = open(path, O_WRONLY | O_APPEND);
            if (shared_fd < 0) die("open");
            if (p == 0) maybe_fdinfo("main", shared_fd);
            pthread_barrier_init(&barrier, NULL, 1);
            app_thread((void *)(intptr_t)p);
            close(shared_fd);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    return verify_tiled(nthreads, nrec, (size_t)recsz);
}

static int mode_append_threads(int argc, char **argv)
{
    (void)argc;
    append_setup(argv);
    shared_fd = open(path, O_WRONLY | O_APPEND);
    maybe_fdinfo("main", shared_fd);
    run_threads(app_thread);
    close(shared_fd);
    return verify_tiled(nthreads, nrec, (size_t)recsz);
}

static int mode_sharedfd_write(int argc, char **argv)
{
    (void)argc;
    nthreads = atoi(argv[3]);
    recsz = atoll(argv[4]);
    nrec = atoll(argv[5]);
    shared_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (shared_fd < 0) die("open");
    maybe_fdinfo("main", shared_fd);
    run_threads(app_thread);
    close(shared_fd);
    return verify_tiled(nthreads, nrec, (size_t)recsz);
}

static int mode_sharedfd_read(int argc, char **argv)
{
    (void)argc;
    nthreads = atoi(argv[3]);
    recsz = atoll(argv[4]);
    nrec = atoll(argv[5]);
    if (recsz < 16) recsz = 16;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char *b = malloc((size_t)recsz);
    for (long long i = 0; i < nrec; i++) {
        memcpy(b, &i, 8);
        for (long long k = 8; k < recsz; k++) b[k] = (char)gen_byte((uint64_t)i + 5, (uint64_t)k);
        if (write_all(fd, b, (size_t)recsz) < 0) die("write");
    }
    fsync(fd);
    close(fd);
    read_count = calloc((size_t)nrec, sizeof(long long));
    shared_fd = open(path, O_RDONLY);
    maybe_fdinfo("main", shared_fd);
    run_threads(sr_thread);
    long long missing = 0, dup = 0;
    for (long long i = 0; i < nrec; i++) { if (!read_count[i]) missing++; if (read_count[i] > 1) dup++; }
    long long end = lseek(shared_fd, 0, SEEK_CUR);
    if (missing || dup || read_bad || end != nrec * recsz) {
        printf("BAD records=%lld missing=%lld read_twice=%lld bad_reads=%lld final_offset=%lld\n", nrec, missing, dup, read_bad, end);
        return 1;
    }
    printf("OK records=%lld each read once, final_offset=%lld\n", nrec, end);
    return 0;
}

static int mode_overlap_pread(int argc, char **argv)
{
    (void)argc;
    nthreads = atoi(argv[3]);
    iters = atoll(argv[4]);
    make_file(9, OV_SIZE);
    shared_fd = open(path, O_RDONLY);
    maybe_fdinfo("main", shared_fd);
    run_threads(ov_thread);
    if (ov_bad) { printf("BAD preads=%lld bad=%lld\n", iters * nthreads, ov_bad); return 1; }
    printf("OK preads=%lld all verified\n", iters * nthreads);
    return 0;
}

/* one child of the fork storm: I/O on the inherited descriptor and on a fresh one; exit status 1 when bad */
static void fork_storm_child(long long i)
{
    alarm(20);
    char *b = (char *)malloc(20000) + 1;
    long long off = (i * 7919) % (FS_SIZE - 20000);
    int bad = pread(shared_fd, b, 12345, off) != 12345;
    for (int k = 0; !bad && k < 12345; k++)
        if ((unsigned char)b[k] != gen_byte(11, (uint64_t)(off + k))) bad = 1;
    gen_fill(11, (uint64_t)off + 3, b, 4099);
    if (pwrite(shared_fd, b, 4099, off + 3) != 4099) bad = 1;
    int f = open(path, O_RDONLY);
    if (f < 0 || pread(f, b, 5000, off + 1) != 5000) bad = 1;
    for (int k = 0; !bad && k < 5000; k++)
        if ((unsigned char)b[k] != gen_byte(11, (uint64_t)(off + 1 + k))) bad = 1;
    close(f);
    _exit(bad);
}

static int mode_fork_storm(int argc, char **argv)
{
    (void)argc;
    nthreads = atoi(argv[3]);
    iters = atoll(argv[4]);
    make_file(11, FS_SIZE);
    shared_fd = open(path, O_RDWR);
    maybe_fdinfo("main", shared_fd);
    pthread_t th[64];
    for (long long t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, fs_thread, (void *)(intptr_t)t);
    long long child_bad = 0;
    for (long long i = 0; i < iters; i++) {
        pid_t c = fork();
        if (c == 0) fork_storm_child(i);
        int st;
        if (waitpid(c, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) child_bad++;
    }
    fs_stop = 1;
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    close(shared_fd);
    long long sz;
    int fd = open(path, O_RDONLY);
    char *b = malloc(FS_SIZE + 1);
    sz = 0;
    ssize_t n;
    while ((n = read(fd, b + sz, FS_SIZE + 1 - sz)) > 0) sz += n;
    close(fd);
    long long content_bad = sz != FS_SIZE;
    for (long long k = 0; !content_bad && k < sz; k++)
        if ((unsigned char)b[k] != gen_byte(11, (uint64_t)k)) content_bad = 1;
    if (child_bad || fs_bad || content_bad) {
        printf("BAD forks=%lld child_bad=%lld thread_bad=%lld content_bad=%lld\n", iters, child_bad, fs_bad, content_bad);
        return 1;
    }
    printf("OK forks=%lld\n", iters);
    return 0;
}

/* argc counts the program, MODE and PATH: min_argc is what the mode's fixed arguments need */
static const struct mode {
    const char *name;
    int (*run)(int argc, char **argv);
    int min_argc;
    const char *usage;
} MODES[] = {
    {"pwrite-threads", mode_pwrite_threads, 6, "PATH T RECSZ NREC [own]"},
    {"pwrite-procs", mode_pwrite_procs, 6, "PATH P RECSZ NREC"},
    {"append-procs", mode_append_procs, 6, "PATH P NREC RECSZ"},
    {"append-threads", mode_append_threads, 6, "PATH T NREC RECSZ"},
    {"sharedfd-read", mode_sharedfd_read, 6, "PATH T RECSZ NREC"},
    {"sharedfd-write", mode_sharedfd_write, 6, "PATH T RECSZ NREC"},
    {"overlap-pread", mode_overlap_pread, 5, "PATH T ITERS"},
    {"fork-storm", mode_fork_storm, 5, "PATH T ITERS"},
};

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: conc MODE PATH args... (see the comment at the top of conc.c)\n"); return 2; }
    const char *m = argv[1];
    path = argv[2];
    signal(SIGALRM, on_alarm);
    alarm(100);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (size_t i = 0; i < sizeof MODES / sizeof MODES[0]; i++) {
        if (strcmp(m, MODES[i].name)) continue;
        if (argc < MODES[i].min_argc) {
            fprintf(stderr, "usage: conc %s %s\n", MODES[i].name, MODES[i].usage);
            return 2;
        }
        return MODES[i].run(argc, argv);
    }
    fprintf(stderr, "conc: unknown mode %s\n", m);
    return 2;
}
