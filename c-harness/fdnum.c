/* fdnum DIR LIMIT: the descriptor numbers a program gets, compared between a plain run and a
 * run under the library (which keeps private descriptors of matched files at numbers the
 * program never gets). With LIMIT > 0 the program first sets RLIMIT_NOFILE to LIMIT (soft
 * and hard). It opens matched files in DIR until EMFILE, closes some low numbers and reopens,
 * redirects stdout by close(1)+open, then runs every descriptor-creating call (open, dup,
 * F_DUPFD, socket, socketpair, pipe, eventfd, memfd_create, epoll_create1, signalfd,
 * timerfd_create, inotify_init1), dup2 onto the top numbers, close_range and closefrom,
 * printing every number and errno on stderr-free stdout lines. */
#include "common.h"
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

static FILE *out;

static int show(const char *what, int r)
{
    fprintf(out, "%s = %d%s%s\n", what, r, r < 0 ? " " : "", r < 0 ? errname(errno) : "");
    fflush(out);
    return r;
}

static int open_data(const char *dir, int i)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/f%d", dir, i);
    int fd = open(p, O_RDWR | O_CREAT, 0644);
    if (fd >= 0) {
        char b[5000];
        memset(b, 'a' + i % 26, sizeof b);
        if (write(fd, b, sizeof b) != (ssize_t)sizeof b) fprintf(out, "write f%d failed %s\n", i, errname(errno));
    }
    return fd;
}

int main(int argc, char **argv)
{
    if (argc != 3) die("usage: fdnum DIR LIMIT");
    const char *dir = argv[1];
    int limit = atoi(argv[2]);
    /* results go to a descriptor the program duplicated first, so stdout can be redirected */
    out = fdopen(dup(1), "w");
    if (!out) die("fdopen");
    if (limit > 0) {
        struct rlimit rl = { (rlim_t)limit, (rlim_t)limit };
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) die("setrlimit");
    }
    int fds[4096], n = 0;
    int cap = limit > 0 ? limit + 5 : 200;
    if (cap > 4096) cap = 4096;
    for (int i = 0; i < cap; i++) {
        int fd = open_data(dir, i);
        char what[64];
        snprintf(what, sizeof what, "open f%d", i);
        show(what, fd);
        if (fd < 0) break;
        fds[n++] = fd;
    }
    /* free some low numbers, then every creating call takes them back in order */
    for (int i = 0; i < n && i < 6; i += 2) show("close", close(fds[i]));
    show("reopen", open_data(dir, 9000));
    show("dup", dup(fds[1]));
    show("F_DUPFD 0", fcntl(fds[1], F_DUPFD, 0));
    show("socket", socket(AF_UNIX, SOCK_STREAM, 0));
    int sp[2] = { -1, -1 }, pp[2] = { -1, -1 };
    show("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, sp));
    fprintf(out, "socketpair fds %d %d\n", sp[0], sp[1]);
    show("pipe", pipe(pp));
    fprintf(out, "pipe fds %d %d\n", pp[0], pp[1]);
    show("eventfd", eventfd(0, 0));
    show("memfd_create", memfd_create("fdnum", 0));
    show("epoll_create1", epoll_create1(0));
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    show("signalfd", signalfd(-1, &m, 0));
    show("timerfd_create", timerfd_create(CLOCK_MONOTONIC, 0));
    show("inotify_init1", inotify_init1(0));
    /* close(1); open: the classic stdout redirect */
    close(1);
    char p[4096];
    snprintf(p, sizeof p, "%s/stdout", dir);
    int o = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    fprintf(out, "stdout redirect = %d\n", o);
    if (o == 1 && write(1, "redirected\n", 11) != 11) fprintf(out, "write 1 failed\n");
    /* dup2/dup3 onto the numbers at the top of the range */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    int top = (int)(rl.rlim_cur > 100000 ? 100000 : rl.rlim_cur);
    for (int k = 1; k <= 3; k++) {
        char what[64];
        snprintf(what, sizeof what, "dup2 onto top-%d", k);
        show(what, dup2(fds[1], top - k));
    }
    show("dup3 onto top-4", dup3(fds[1], top - 4, O_CLOEXEC));
    show("dup2 onto top", dup2(fds[1], top));
    show("F_DUPFD top-6", fcntl(fds[1], F_DUPFD, top - 6));
    /* the program's own numbers keep working after its close_range/closefrom */
    show("close_range", close_range(fds[n > 10 ? 10 : n - 1], top - 8, 0));
    show("open after close_range", open_data(dir, 9001));
    char b[10];
    show("read f1", (int)pread(fds[1], b, 10, 0));
    fprintf(out, "b %.10s\n", b);
    show("closefrom then open", (closefrom(fds[3]), open_data(dir, 9002)));
    show("close top-1", close(top - 1));
    show("final open", open_data(dir, 9003));
    return 0;
}
