/* A direct mapping whose device fails under it: the file is written (gen_byte of common.h),
 * mapped read-only, its first quarter read; then, once the test has shut the filesystem down
 * (EXT4_IOC_SHUTDOWN: every read fails with EIO from then on), every page is read in a seeded
 * order. A page must either hold the file's bytes or fault (SIGBUS, or SIGSEGV where the
 * mapping could not be made again): never zeros, never other bytes.
 *   mapshut FILE SIZE SEED -> "ready" (waits for a line on stdin), then
 *                             "ok=N bus=N segv=N bad=N" (exit 1 if bad > 0) */
#include "common.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>

static sigjmp_buf jb;

static void on_fault(int sig) { siglongjmp(jb, sig); }

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: mapshut FILE SIZE SEED\n");
        return 2;
    }
    size_t size = strtoull(argv[2], NULL, 0), page = 4096, pages = (size + page - 1) / page;
    uint64_t seed = strtoull(argv[3], NULL, 0);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open %s: %s", argv[1], strerror(errno));
    unsigned char *buf = malloc(1 << 20);
    for (size_t off = 0; off < size; off += 1 << 20) {
        size_t n = size - off < (1u << 20) ? size - off : 1u << 20;
        gen_fill(seed, off, buf, n);
        if (pwrite(fd, buf, n, off) != (ssize_t)n) die("pwrite: %s", strerror(errno));
    }
    if (fsync(fd) != 0) die("fsync: %s", strerror(errno));
    close(fd);
    fd = open(argv[1], O_RDONLY);
    if (fd < 0) die("open: %s", strerror(errno));
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    unsigned char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) die("mmap: %s", strerror(errno));
    struct sigaction sa = {0};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_NODEFER;
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
    volatile size_t ok = 0, bus = 0, segv = 0, bad = 0;
    volatile size_t i;
    for (i = 0; i < pages / 4; i++)
        if (m[i * page] != gen_byte(seed, i * page)) bad++;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) die("no go");
    size_t *order = malloc(pages * sizeof *order);
    for (size_t k = 0; k < pages; k++) order[k] = k;
    rng_t r = {seed};
    for (size_t k = pages; k > 1; k--) {
        size_t j = rng_below(&r, k), t = order[k - 1];
        order[k - 1] = order[j];
        order[j] = t;
    }
    for (i = 0; i < pages; i++) {
        size_t p = order[i], n = size - p * page < page ? size - p * page : page;
        int sig = sigsetjmp(jb, 1);
        if (sig == SIGBUS) {
            bus++;
            continue;
        }
        if (sig == SIGSEGV) {
            segv++;
            continue;
        }
        size_t wrong = 0;
        for (size_t k = 0; k < n; k++)
            if (m[p * page + k] != gen_byte(seed, p * page + k)) wrong++;
        if (wrong) {
            if (bad < 5) fprintf(stderr, "page %zu: %zu wrong bytes\n", p, wrong);
            bad++;
        } else {
            ok++;
        }
    }
    printf("ok=%zu bus=%zu segv=%zu bad=%zu\n", ok, bus, segv, bad);
    return bad ? 1 : 0;
}
