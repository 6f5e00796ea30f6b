/* brun: runs one measured program and reports what the kernel counted for it
 * (bench/bench.py runs every cell through it).
 *
 *   brun -o RESULT [-t SECS] -- PROGRAM ARG...
 *
 * Forks and execs PROGRAM (stdin, stdout, stderr inherited), waits for it without reaping
 * (waitid WNOWAIT) to read its /proc/PID/io, then reaps it with wait4 for its rusage, and
 * writes to RESULT one line:
 *   "rc=<exit code or 128+signal> utime=<s> stime=<s> maxrss=<KiB> read_bytes=<n> write_bytes=<n>"
 * Running the program from this small process rather than from Python keeps ru_maxrss
 * honest: a forked child's peak RSS starts at its parent's (the exec keeps the high-water
 * mark of the forked copy). After SECS (default 600) the program is killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t child = -1;
static void on_alarm(int s)
{
    (void)s;
    if (child > 0) kill(child, SIGKILL);
}

int main(int argc, char **argv)
{
    const char *out = NULL;
    unsigned secs = 600;
    int c;
    while ((c = getopt(argc, argv, "+o:t:")) != -1) {
        if (c == 'o') out = optarg;
        else if (c == 't') secs = (unsigned)atoi(optarg);
        else return 2;
    }
    if (!out || optind >= argc) { fprintf(stderr, "usage: brun -o RESULT [-t SECS] -- PROGRAM ARG...\n"); return 2; }
    child = fork();
    if (child < 0) { perror("brun: fork"); return 2; }
    if (child == 0) {
        execvp(argv[optind], argv + optind);
        fprintf(stderr, "brun: exec %s: %s\n", argv[optind], strerror(errno));
        _exit(127);
    }
    signal(SIGALRM, on_alarm);
    alarm(secs);
    siginfo_t si;
    while (waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {}
    long long rb = -1, wb = -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/io", (int)child);
    FILE *f = fopen(path, "r");
    if (f) {
        char line[128];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "read_bytes:", 11)) rb = atoll(line + 11);
            else if (!strncmp(line, "write_bytes:", 12)) wb = atoll(line + 12);
        }
        fclose(f);
    }
    int st;
    struct rusage ru;
    while (wait4(child, &st, 0, &ru) < 0 && errno == EINTR) {}
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    FILE *o = fopen(out, "w");
    if (!o) { perror("brun: result file"); return 2; }
    fprintf(o, "rc=%d utime=%.6f stime=%.6f maxrss=%ld read_bytes=%lld write_bytes=%lld\n", rc,
            ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
            ru.ru_maxrss, rb, wb);
    fclose(o);
    return 0;
}
