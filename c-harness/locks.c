/* locks PATH ACTION: takes a POSIX write lock on bytes [0,100) of PATH (a matched file),
 * does ACTION, prints "READY" and waits for stdin to close; the test checks from another
 * process with F_GETLK that the lock is still held, as it is without the library.
 * ACTION: io (misaligned reads and writes through the locked descriptor), reopen (the file
 * opened again, with I/O through the new descriptor), dup2 (dup2 onto the top numbers of the
 * descriptor range, where the library may keep its own), closefrom (closefrom above the
 * program's descriptors), fork (a child does I/O on the inherited descriptor and exits),
 * exec (the program re-executes itself, keeping the descriptor; the new image waits),
 * exec-reopen (as exec, and the new image opens the file again and does I/O through both),
 * dup2-twin and dup3-twin (the number of the library's twin of the file, found in
 * /proc/self/fd before the lock, gets another descriptor with dup2 or dup3; the twin must be
 * below the soft RLIMIT_NOFILE, where a program can reach it), giveup (with a second
 * matched file open, the program's descriptors fill every free number up to the soft limit,
 * where the library gives its own up, and are closed again). */
#include "common.h"
#include <sys/wait.h>

static void io(int fd)
{
    char *b = xalloc(70000, 3);
    memset(b, 'x', 70000);
    if (pwrite(fd, b, 66667, 4097) != 66667) die("pwrite");
    if (pread(fd, b, 12345, 3) != 12345) die("pread");
    if (lseek(fd, 5, SEEK_SET) != 5 || write(fd, b, 1000) != 1000) die("write");
}

/* The number of another descriptor of PATH's file than FD (the library's twin), or -1. */
static int other_descriptor(const char *path, int fd)
{
    struct stat want, st;
    if (stat(path, &want) < 0) die("stat");
    DIR *d = opendir("/proc/self/fd");
    if (!d) die("opendir");
    int found = -1, dfd = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        int n = atoi(e->d_name);
        if (e->d_name[0] == '.' || n == fd || n == dfd || fstat(n, &st) < 0) continue;
        if (st.st_dev == want.st_dev && st.st_ino == want.st_ino) found = n;
    }
    closedir(d);
    return found;
}

static void wait_for_test(void)
{
    printf("READY\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
}

int main(int argc, char **argv)
{
    if (argc < 3) die("usage: locks PATH ACTION");
    const char *path = argv[1], *action = argv[2];
    if (!strcmp(action, "after-exec")) {
        int fd = atoi(argv[3]);
        io(fd);
        if (argc > 4) {
            int g = open(path, O_RDWR);
            if (g < 0) die("reopen");
            io(g);
            io(fd);
        }
        wait_for_test();
        return 0;
    }
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) die("open");
    io(fd);
    int twin = other_descriptor(path, fd);
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
    if (fcntl(fd, F_SETLK, &fl) < 0) die("F_SETLK");
    if (!strcmp(action, "io")) {
        io(fd);
    } else if (!strcmp(action, "reopen")) {
        int g = open(path, O_RDWR);
        if (g < 0) die("reopen");
        io(g);
    } else if (!strcmp(action, "dup2")) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        long top = rl.rlim_cur > 100000 ? 100000 : (long)rl.rlim_cur;
        int p[2];
        if (pipe(p) < 0) die("pipe");
        for (long k = 1; k <= 70 && top - k > fd; k++) dup2(p[0], (int)(top - k));
        io(fd);
    } else if (!strcmp(action, "dup2-twin") || !strcmp(action, "dup3-twin")) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        if (twin < 0 || (rlim_t)twin >= rl.rlim_cur) die("no twin below the soft limit (%d)", twin);
        int p[2];
        if (pipe(p) < 0) die("pipe");
        int r = action[3] == '2' ? dup2(p[0], twin) : dup3(p[0], twin, O_CLOEXEC);
        if (r != twin) die("dup onto %d", twin);
        io(fd);
    } else if (!strcmp(action, "giveup")) {
        char other[4096];
        snprintf(other, sizeof other, "%s.other", path);
        int o = open(other, O_RDWR | O_CREAT, 0644);
        if (o < 0) die("open other");
        io(o);
        int got[70000], n = 0;
        while (n < 70000 && (got[n] = open("/dev/null", O_RDONLY)) >= 0) n++;
        io(fd);
        while (n > 0) close(got[--n]);
        io(fd);
    } else if (!strcmp(action, "closefrom")) {
        closefrom(fd + 1);
        io(fd);
    } else if (!strcmp(action, "fork")) {
        pid_t c = fork();
        if (c == 0) {
            io(fd);
            _exit(0);
        }
        int st;
        waitpid(c, &st, 0);
        io(fd);
    } else if (!strcmp(action, "exec")) {
        char fds[16];
        snprintf(fds, sizeof fds, "%d", fd);
        execl("/proc/self/exe", argv[0], path, "after-exec", fds, (char *)NULL);
        die("exec");
    } else if (!strcmp(action, "exec-reopen")) {
        char fds[16];
        snprintf(fds, sizeof fds, "%d", fd);
        execl("/proc/self/exe", argv[0], path, "after-exec", fds, "reopen", (char *)NULL);
        die("exec");
    } else {
        die("unknown action %s", action);
    }
    wait_for_test();
    return 0;
}
