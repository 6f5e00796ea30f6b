/* locks PATH ACTION: takes a POSIX write lock on bytes [0,100) of PATH (a matched file),
 * does ACTION, prints "READY" and waits for stdin to close; the test checks from another
 * process with F_GETLK that the lock is still held, as it is without the library.
 * ACTION: io (misaligned reads and writes through the locked descriptor), reopen (the file
 * opened again, with I/O through the new descriptor), dup2 (dup2 onto the top numbers of the
 * descriptor range, where the library may keep its own), closefrom (closefrom above the
 * program's descriptors), fork (a child does I/O on the inherited descriptor and exits),
 * exec (the program re-executes itself, keeping the descriptor; the new image waits). */
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
        wait_for_test();
        return 0;
    }
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) die("open");
    io(fd);
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
    } else {
        die("unknown action %s", action);
    }
    wait_for_test();
    return 0;
}
