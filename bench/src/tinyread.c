/* tinyread: the unmanaged-fd micro-benchmark (bench/bench.py runs it with and without
 * LD_PRELOAD on a file that S3DLIO_DIRECT_PATHS does not match).
 *
 *   tinyread [-n COUNT] [-b BYTES] FILE
 *
 * COUNT read()s of BYTES (default 1000000 of 1 byte) from FILE, going back to the start
 * with lseek at end of file; prints "bytes=<n> secs=<elapsed> calls=<COUNT>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long long count = 1000000, total = 0;
    size_t b = 1;
    int c;
    while ((c = getopt(argc, argv, "n:b:")) != -1) {
        if (c == 'n') count = strtoll(optarg, NULL, 0);
        else if (c == 'b') b = strtoull(optarg, NULL, 0);
        else return 2;
    }
    if (optind != argc - 1 || b < 1 || b > 65536) { fprintf(stderr, "usage: tinyread [-n N] [-b B] FILE\n"); return 2; }
    static char buf[65536];
    int fd = open(argv[optind], O_RDONLY);
    if (fd < 0) { fprintf(stderr, "tinyread: open: %s\n", strerror(errno)); return 1; }
    struct timespec a, z;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long long i = 0; i < count; i++) {
        ssize_t n = read(fd, buf, b);
        if (n < 0) { fprintf(stderr, "tinyread: read: %s\n", strerror(errno)); return 1; }
        if (n == 0) { lseek(fd, 0, SEEK_SET); i--; continue; }
        total += n;
    }
    clock_gettime(CLOCK_MONOTONIC, &z);
    printf("bytes=%lld secs=%.6f calls=%lld\n", total, (z.tv_sec - a.tv_sec) + (z.tv_nsec - a.tv_nsec) / 1e9, count);
    return 0;
}
