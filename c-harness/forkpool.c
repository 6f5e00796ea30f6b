/* forkpool: process workloads the shim's state must survive.
 *
 *   forkpool pool DIR WORKERS NFILES
 *        The parent writes DIR/in.<k> (k < NFILES, odd sizes, known data) with write(),
 *        opens every input O_RDONLY and DIR/shared O_RDWR|O_CREAT|O_TRUNC, and forks a pool of
 *        WORKERS children that inherit those descriptors. Worker w takes the inputs with
 *        k % WORKERS == w: it pread()s the inherited descriptor in 4097-byte chunks, opens the
 *        file itself and read()s it in (65537 + w)-byte chunks, verifies both, writes
 *        DIR/out.<k> (the input XOR (k + 1)) with its own open in (1000 + 7w)-byte chunks, and
 *        pwrite()s its own 10007-byte record at w * 10007 of the inherited shared descriptor.
 *        Even workers end with exit(0), odd ones with _exit(0) (as Python's fork workers do);
 *        a worker that found a problem exits with 1. The parent waits for all of them, then
 *        verifies every out.<k> (read()) and the shared file (pread() on its inherited copy).
 *        stdout (deterministic): "worker <w> status=<n>" lines, "verify ..." lines, "OK ..."
 *        or "BAD ..." lines.
 *        stderr: "PARENT pid=<pid> read=<bytes> wrote=<bytes>" and, per worker,
 *        "CHILD <w> pid=<pid> how=<exit|_exit> read=<bytes> wrote=<bytes>": the bytes each
 *        process read and wrote on the matched files (what its statistics must show);
 *        "FDINFO parent-in0", "FDINFO child-inherited-in<k>", "FDINFO child-own-in<k>".
 *
 *   forkpool spawn DIR SELF
 *        The parent writes DIR/in.0 (300007 bytes), opens it and read()s 100001 bytes, then
 *        starts SELF ("forkpool child DIR <fd> <via>") three ways: posix_spawn, vfork+execv
 *        and fork+execv, waiting for each. Each child pread()s the inherited descriptor and
 *        read()s its own open of DIR/in.0, verifies both, writes DIR/out.<via>, and prints
 *        "child via=<via> inherited=<ok> own=<ok> wrote=<n>" on stdout and
 *        "CHILD via=<via> pid=<pid> read=<bytes> wrote=<bytes>" and "FDINFO child-own-<via>"
 *        on stderr. The parent then read()s the rest of its descriptor, which must continue
 *        at 100001, prints "parent rest=<n> ok=<0|1>", verifies the three outputs, and
 *        "OK" or "BAD".
 */
#include "common.h"
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

#define MAXF 64
#define RECSZ 10007

static long long in_size(int k) { return 300007 + (long long)k * 65537 + (k % 3) * 4096; }

static int write_file(const char *path, uint64_t seed, long long size, size_t chunk, long long *wrote)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    unsigned char *b = xalloc(chunk, 1);
    for (long long off = 0; off < size;) {
        size_t n = chunk;
        if ((long long)n > size - off) n = (size_t)(size - off);
        gen_fill(seed, (uint64_t)off, b, n);
        if (write_all(fd, b, n)) { close(fd); return -1; }
        off += (long long)n;
        *wrote += (long long)n;
    }
    return close(fd);
}

/* read all of fd (pread from 0 when use_pread, else read from the current offset) and
 * compare with gen_byte(seed, start..) XOR x; returns bytes read or -1 on mismatch */
static long long read_verify(int fd, int use_pread, long long start, size_t chunk, uint64_t seed, unsigned char x,
                             long long *rd)
{
    unsigned char *b = xalloc(chunk, 3);
    long long off = start;
    for (;;) {
        ssize_t n = use_pread ? pread(fd, b, chunk, off) : read(fd, b, chunk);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        for (ssize_t i = 0; i < n; i++)
            if (b[i] != (unsigned char)(gen_byte(seed, (uint64_t)(off + i)) ^ x)) return -1;
        off += n;
        *rd += n;
    }
    return off - start;
}

static int cmd_pool(const char *dir, int workers, int nfiles)
{
    char p[4300];
    int in_fd[MAXF];
    long long prd = 0, pwr = 0;
    if (nfiles > MAXF || workers < 1) return 2;
    for (int k = 0; k < nfiles; k++) {
        snprintf(p, sizeof p, "%s/in.%d", dir, k);
        if (write_file(p, 100 + (uint64_t)k, in_size(k), 65537, &pwr)) die("write %s", p);
        in_fd[k] = open(p, O_RDONLY);
        if (in_fd[k] < 0) die("open %s", p);
    }
    print_fdinfo("parent-in0", in_fd[0]);
    snprintf(p, sizeof p, "%s/shared", dir);
    int shared = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (shared < 0) die("open %s", p);
    fflush(stdout);
    fflush(stderr);
    pid_t pids[256];
    for (int w = 0; w < workers && w < 256; w++) {
        pid_t c = fork();
        if (c < 0) die("fork");
        if (c == 0) {
            long long rd = 0, wr = 0;
            int errs = 0;
            for (int k = w; k < nfiles; k += workers) {
                char l[64];
                snprintf(l, sizeof l, "child-inherited-in%d", k);
                print_fdinfo(l, in_fd[k]);
                if (read_verify(in_fd[k], 1, 0, 4097, 100 + (uint64_t)k, 0, &rd) != in_size(k)) {
                    fprintf(stderr, "worker %d: inherited in.%d wrong\n", w, k);
                    errs++;
                }
                snprintf(p, sizeof p, "%s/in.%d", dir, k);
                int fd = open(p, O_RDONLY);
                snprintf(l, sizeof l, "child-own-in%d", k);
                print_fdinfo(l, fd);
                if (fd < 0 || read_verify(fd, 0, 0, 65537 + (size_t)w, 100 + (uint64_t)k, 0, &rd) != in_size(k)) {
                    fprintf(stderr, "worker %d: own in.%d wrong\n", w, k);
                    errs++;
                }
                /* out.k = in.k XOR (k+1), written from the data just verified */
                snprintf(p, sizeof p, "%s/out.%d", dir, k);
                int o = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                size_t ch = 1000 + 7 * (size_t)w;
                unsigned char *b = xalloc(ch, 5);
                for (long long off = 0; o >= 0 && off < in_size(k);) {
                    size_t n = ch;
                    if ((long long)n > in_size(k) - off) n = (size_t)(in_size(k) - off);
                    for (size_t i = 0; i < n; i++) b[i] = gen_byte(100 + (uint64_t)k, (uint64_t)off + i) ^ (unsigned char)(k + 1);
                    if (write_all(o, b, n)) { errs++; break; }
                    off += (long long)n;
                    wr += (long long)n;
                }
                if (o < 0 || close(o)) errs++;
                if (fd >= 0) close(fd);
            }
            /* the shared record, in two odd pieces */
            unsigned char rec[RECSZ + 8];
            gen_fill(900 + (uint64_t)w, 0, rec + 1, RECSZ);
            long long base = (long long)w * RECSZ;
            if (pwrite(shared, rec + 1, 4099, base) != 4099) errs++;
            else wr += 4099;
            if (pwrite(shared, rec + 1 + 4099, RECSZ - 4099, base + 4099) != RECSZ - 4099) errs++;
            else wr += RECSZ - 4099;
            fprintf(stderr, "CHILD %d pid=%d how=%s read=%lld wrote=%lld\n", w, (int)getpid(), w % 2 ? "_exit" : "exit",
                    rd, wr);
            fflush(stderr);
            if (w % 2) _exit(errs ? 1 : 0);
            exit(errs ? 1 : 0);
        }
        pids[w] = c;
    }
    int bad = 0;
    for (int w = 0; w < workers; w++) {
        int st = 0;
        waitpid(pids[w], &st, 0);
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        printf("worker %d status=%d\n", w, code);
        if (code) bad = 1;
    }
    for (int k = 0; k < nfiles; k++) {
        snprintf(p, sizeof p, "%s/out.%d", dir, k);
        int fd = open(p, O_RDONLY);
        long long n = fd < 0 ? -1 : read_verify(fd, 0, 0, 100000, 100 + (uint64_t)k, (unsigned char)(k + 1), &prd);
        if (fd >= 0) close(fd);
        printf("verify out.%d size=%lld ok=%d\n", k, n, n == in_size(k));
        if (n != in_size(k)) bad = 1;
    }
    unsigned char *all = xalloc((size_t)workers * RECSZ + 16, 1);
    ssize_t n = pread(shared, all, (size_t)workers * RECSZ + 16, 0);
    int sok = n == (ssize_t)workers * RECSZ;
    if (n > 0) prd += n;
    for (int w = 0; sok && w < workers; w++)
        for (int i = 0; i < RECSZ; i++)
            if (all[(size_t)w * RECSZ + (size_t)i] != gen_byte(900 + (uint64_t)w, (uint64_t)i)) { sok = 0; break; }
    printf("verify shared size=%zd ok=%d\n", n, sok);
    if (!sok) bad = 1;
    fprintf(stderr, "PARENT pid=%d read=%lld wrote=%lld\n", (int)getpid(), prd, pwr);
    printf("%s workers=%d files=%d\n", bad ? "BAD" : "OK", workers, nfiles);
    return bad;
}

static int cmd_child(const char *dir, int fd, const char *via)
{
    char p[4300];
    long long rd = 0, wr = 0;
    int inh = read_verify(fd, 1, 0, 4097, 100, 0, &rd) == in_size(0);
    snprintf(p, sizeof p, "%s/in.0", dir);
    int own = open(p, O_RDONLY);
    char l[64];
    snprintf(l, sizeof l, "child-own-%s", via);
    print_fdinfo(l, own);
    int ok = own >= 0 && read_verify(own, 0, 0, 65539, 100, 0, &rd) == in_size(0);
    if (own >= 0) close(own);
    snprintf(p, sizeof p, "%s/out.%s", dir, via);
    int wok = write_file(p, 777, 123457, 4097, &wr) == 0;
    printf("child via=%s inherited=%d own=%d wrote=%d\n", via, inh, ok, wok);
    fprintf(stderr, "CHILD via=%s pid=%d read=%lld wrote=%lld\n", via, (int)getpid(), rd, wr);
    return inh && ok && wok ? 0 : 1;
}

static int cmd_spawn(const char *dir, const char *self)
{
    char p[4300], fds[16];
    long long wr = 0, rd = 0;
    int bad = 0;
    snprintf(p, sizeof p, "%s/in.0", dir);
    if (write_file(p, 100, in_size(0), 65537, &wr)) die("write %s", p);
    int fd = open(p, O_RDONLY);
    if (fd < 0) die("open %s", p);
    print_fdinfo("parent", fd);
    unsigned char *b = xalloc(200000, 1);
    ssize_t n = read(fd, b, 100001);
    int ok = n == 100001;
    for (ssize_t i = 0; ok && i < n; i++) ok = b[i] == gen_byte(100, (uint64_t)i);
    printf("parent first=%zd ok=%d\n", n, ok);
    if (!ok) bad = 1;
    fflush(stdout);
    fflush(stderr);
    snprintf(fds, sizeof fds, "%d", fd);
    const char *vias[] = {"posix_spawn", "vfork", "fork-exec"};
    for (int v = 0; v < 3; v++) {
        char *args[] = {(char *)"forkpool", (char *)"child", (char *)dir, fds, (char *)vias[v], NULL};
        pid_t c = -1;
        if (v == 0) {
            int e = posix_spawn(&c, self, NULL, NULL, args, environ);
            if (e) { printf("posix_spawn = %s\n", errname(e)); bad = 1; continue; }
        } else if (v == 1) {
            c = vfork();
            if (c == 0) {
                execv(self, args);
                _exit(127);
            }
        } else {
            c = fork();
            if (c == 0) {
                execv(self, args);
                _exit(127);
            }
        }
        if (c < 0) die("start %s", vias[v]);
        int st = 0;
        waitpid(c, &st, 0);
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        printf("%s status=%d\n", vias[v], code);
        fflush(stdout);
        if (code) bad = 1;
    }
    long long r = read_verify(fd, 0, 100001, 4097, 100, 0, &rd);
    printf("parent rest=%lld ok=%d\n", r, r == in_size(0) - 100001);
    if (r != in_size(0) - 100001) bad = 1;
    close(fd);
    for (int v = 0; v < 3; v++) {
        snprintf(p, sizeof p, "%s/out.%s", dir, vias[v]);
        int o = open(p, O_RDONLY);
        long long got = o < 0 ? -1 : read_verify(o, 0, 0, 100000, 777, 0, &rd);
        if (o >= 0) close(o);
        printf("verify out.%s size=%lld ok=%d\n", vias[v], got, got == 123457);
        if (got != 123457) bad = 1;
    }
    fprintf(stderr, "PARENT pid=%d read=%lld wrote=%lld\n", (int)getpid(), rd + (n > 0 ? n : 0), wr);
    printf("%s\n", bad ? "BAD" : "OK");
    return bad;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && !strcmp(argv[1], "pool")) return cmd_pool(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc >= 4 && !strcmp(argv[1], "spawn")) return cmd_spawn(argv[2], argv[3]);
    if (argc >= 5 && !strcmp(argv[1], "child")) return cmd_child(argv[2], atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: forkpool pool DIR WORKERS NFILES | forkpool spawn DIR SELF (see forkpool.c)\n");
    return 2;
}
