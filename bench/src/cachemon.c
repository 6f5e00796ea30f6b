/* cachemon: page-cache residency of files, sampled with mincore (bench/bench.py runs it).
 *
 *   cachemon -o PATH...            once: prints "resident=<bytes> size=<bytes>"
 *   cachemon [-i MS] PATH...       samples every MS ms (default 50) until SIGTERM/SIGINT,
 *                                  then prints "peak=<bytes> last=<bytes> size=<bytes> samples=<n>"
 * A PATH that is a directory stands for the regular files in it (recursively); files may
 * appear, grow or vanish between samples. Mapping a file does not bring it into the cache.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }
static long pg;
static unsigned char *vec;
static size_t veclen;

static void file_res(const char *path, long long *res, long long *size)
{
    int fd = open(path, O_RDONLY | O_NOATIME);
    if (fd < 0) fd = open(path, O_RDONLY);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        size_t len = (size_t)st.st_size;
        void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            size_t np = (len + pg - 1) / pg;
            if (np > veclen) { free(vec); vec = malloc(np); veclen = vec ? np : 0; }
            if (vec && mincore(m, len, vec) == 0) {
                long long r = 0;
                for (size_t i = 0; i < np; i++) r += vec[i] & 1;
                *res += r * pg;
            }
            munmap(m, len);
        }
        *size += st.st_size;
    }
    close(fd);
}

static void walk(const char *path, long long *res, long long *size)
{
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return;
        struct dirent *e;
        char sub[4096];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            walk(sub, res, size);
        }
        closedir(d);
    } else if (S_ISREG(st.st_mode)) {
        file_res(path, res, size);
    }
}

static void sample(int n, char **paths, long long *res, long long *size)
{
    *res = *size = 0;
    for (int i = 0; i < n; i++) walk(paths[i], res, size);
}

int main(int argc, char **argv)
{
    int once = 0, c;
    long ms = 50;
    while ((c = getopt(argc, argv, "oi:")) != -1) {
        if (c == 'o') once = 1;
        else if (c == 'i') ms = atol(optarg);
        else { fprintf(stderr, "usage: cachemon [-o] [-i MS] PATH...\n"); return 2; }
    }
    pg = sysconf(_SC_PAGESIZE);
    int n = argc - optind;
    char **paths = argv + optind;
    long long res, size;
    if (once) {
        sample(n, paths, &res, &size);
        printf("resident=%lld size=%lld\n", res, size);
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    long long peak = 0, maxsize = 0, samples = 0;
    printf("ready\n");
    fflush(stdout);
    while (!stop) {
        sample(n, paths, &res, &size);
        if (res > peak) peak = res;
        if (size > maxsize) maxsize = size;
        samples++;
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    sample(n, paths, &res, &size);
    if (res > peak) peak = res;
    printf("peak=%lld last=%lld size=%lld samples=%lld\n", peak, res, maxsize, samples + 1);
    return 0;
}
