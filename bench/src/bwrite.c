/* bwrite: the C writer of the benchmark (bench/bench.py runs it).
 *
 *   bwrite [-b CHUNK] [-A] [-D] [-S BYTES] [-T SECS] FILE
 *
 * Creates/truncates FILE and write()s CHUNK-byte pieces sequentially until BYTES are
 * written (or SECS have passed), then fsync()s and closes it. -A: posix_memalign(4096)
 * buffer (default malloc); -D: open with O_DIRECT (native; needs aligned chunks).
 * Prints "bytes=<written> secs=<elapsed, fsync included> calls=<write calls>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    size_t chunk = 1 << 20;
    int aligned = 0, odirect = 0, c;
    long long total = 1LL << 30;
    double tmax = 0;
    while ((c = getopt(argc, argv, "b:ADS:T:")) != -1) {
        switch (c) {
        case 'b': chunk = strtoull(optarg, NULL, 0); break;
        case 'A': aligned = 1; break;
        case 'D': odirect = 1; break;
        case 'S': total = strtoll(optarg, NULL, 0); break;
        case 'T': tmax = atof(optarg); break;
        default: fprintf(stderr, "usage: see the header of bench/src/bwrite.c\n"); return 2;
        }
    }
    if (optind != argc - 1 || chunk < 1) { fprintf(stderr, "bwrite: bad arguments\n"); return 2; }
    char *buf = NULL;
    if (aligned) {
        if (posix_memalign((void **)&buf, 4096, chunk)) buf = NULL;
    } else {
        buf = malloc(chunk);
    }
    if (!buf) { fprintf(stderr, "bwrite: out of memory\n"); return 1; }
    unsigned long long x = 88172645463325252ULL;
    for (size_t i = 0; i < chunk; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        buf[i] = (char)x;
    }
    double t0 = now();
    int fd = open(argv[optind], O_WRONLY | O_CREAT | O_TRUNC | (odirect ? O_DIRECT : 0), 0644);
    if (fd < 0) { fprintf(stderr, "bwrite: open %s: %s\n", argv[optind], strerror(errno)); return 1; }
    long long done = 0, calls = 0;
    while (done < total) {
        size_t want = chunk;
        if ((long long)want > total - done) want = (size_t)(total - done);
        ssize_t n = write(fd, buf, want);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "bwrite: write: %s\n", strerror(errno));
            return 1;
        }
        buf[0]++; /* not the same bytes every time */
        done += n;
        calls++;
        if (tmax > 0 && (calls & 63) == 0 && now() - t0 >= tmax) break;
    }
    if (fsync(fd) < 0) { fprintf(stderr, "bwrite: fsync: %s\n", strerror(errno)); return 1; }
    if (close(fd) < 0) { fprintf(stderr, "bwrite: close: %s\n", strerror(errno)); return 1; }
    printf("bytes=%lld secs=%.6f calls=%lld\n", done, now() - t0, calls);
    return 0;
}
