/* fdsem CMD ARGS...: descriptor semantics a preload library must keep intact.
 * Every command prints deterministic results on stdout (compared between a plain run and
 * a run under the shim) and the kernel's view of descriptors on stderr as
 * "FDINFO <label> fd=<n> flags:\t<octal>" (verbatim fdinfo line). Exit 0 unless a setup
 * step fails.
 *
 *   fdsem probe PATH [r|w|rw|a|path|dir]   open, print getfl (stdout) and FDINFO (stderr)
 *   fdsem probeat DIR NAME                 openat(open(DIR), NAME, O_RDONLY), same output
 *   fdsem getfl PATH                 open with many flag sets: F_GETFL of each
 *   fdsem explicit-direct PATH       the program asks for O_DIRECT itself (open and F_SETFL):
 *                                    it must get the kernel's results (EINVAL on misalignment)
 *   fdsem setfl PATH                 the program's own F_SETFL on a matched fd
 *   fdsem dup PATH                   dup/dup2/dup3/F_DUPFD/F_DUPFD_CLOEXEC, dup2/dup3 over a
 *                                    tracked fd with a pipe/socket, close_range, closefrom
 *   fdsem reuse PATH OTHER           fd numbers reused behind the shim's back (fdopen+fclose,
 *                                    fopen+fclose, closefrom) by pipe/socketpair/memfd/eventfd
 *                                    and by an unmatched file OTHER
 *   fdsem copy SRC DST               copy_file_range/sendfile/sendfile64/splice, odd sizes;
 *                                    writes DST, DST.2, DST.3
 *   fdsem cfr SRC DST                one copy_file_range loop of all of SRC (for statistics)
 *   fdsem fork PATH                  fork child reading/writing inherited descriptors
 *   fdsem exec w|r VIA PATH CMD...   open PATH at fd 5 (w: O_WRONLY|O_CREAT|O_TRUNC, r: O_RDONLY),
 *                                    do I/O, run CMD with fd 5 inherited (VIA: execv execvp
 *                                    execve execl posix_spawn posix_spawnp system popen), then
 *                                    more I/O on fd 5
 *   fdsem sigwrite other|same PATH1 PATH2 ITERS
 *                                    SIGALRM every 200us writes a record on a managed fd
 *                                    (PATH2, or a disjoint region of PATH1) while the main
 *                                    thread writes PATH1
 *   fdsem tmpfile DIR NAME           O_TMPFILE in DIR, unaligned I/O, linkat to DIR/NAME
 *   fdsem excl PATH                  O_CREAT|O_EXCL create, I/O, second O_EXCL gets EEXIST
 *   fdsem locks PATH                 POSIX record lock survives the program's unaligned I/O
 *   fdsem wronly PATH                create mode 0200, O_WRONLY, unaligned writes/rewrites
 *   fdsem closefrom-log PATH OUT     closefrom(3) then the program's own file OUT at fd 3
 *   fdsem nonreg DIR                 directory, FIFO, O_PATH, socket, /dev/null, /dev/zero,
 *                                    /proc and /sys files (run with PATHS covering them)
 *   fdsem highfd PATH N              the matched file at descriptor N (dup2), e.g. near a huge
 *                                    RLIMIT_NOFILE
 *   fdsem statsfork PATH exit|_exit  parent reads 100001 bytes, child 50001, parent 7 more
 *   fdsem statsexec PATH PROG ARGS   reads 100001 bytes then execv(PROG)
 */
#include "common.h"
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>

extern char **environ;

static void res(const char *what, long long r, int e)
{
    if (r < 0) printf("%s = %lld %s\n", what, r, errname(e));
    else printf("%s = %lld\n", what, r);
}
#define RES(what, call) do { errno = 0; long long r_ = (long long)(call); int e_ = errno; res(what, r_, e_); } while (0)
static char *mbuf(size_t n, size_t mis) { return (char *)malloc(n + mis + 1) + mis; }
static void print_file(const char *label, const char *path)
{
    long long sz;
    uint64_t h = file_hash(path, &sz);
    printf("%s size=%lld fnv=%016llx\n", label, sz, (unsigned long long)h);
}
static int xopen(const char *p, int fl, mode_t m)
{
    int fd = open(p, fl, m);
    if (fd < 0) die("open %s", p);
    return fd;
}
static void show_pos(const char *label, int fd)
{
    printf("%s pos=%lld\n", label, (long long)lseek(fd, 0, SEEK_CUR));
}

static int cmd_probe(int argc, char **argv)
{
    const char *how = argc > 3 ? argv[3] : "r";
    int fl = O_RDONLY;
    if (!strcmp(how, "w")) fl = O_WRONLY | O_CREAT;
    else if (!strcmp(how, "rw")) fl = O_RDWR | O_CREAT;
    else if (!strcmp(how, "a")) fl = O_WRONLY | O_APPEND | O_CREAT;
    else if (!strcmp(how, "path")) fl = O_PATH;
    else if (!strcmp(how, "dir")) fl = O_RDONLY | O_DIRECTORY;
    int fd = open(argv[2], fl, 0644);
    if (fd < 0) { printf("open = -1 %s\n", errname(errno)); return 0; }
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo(argv[2], fd);
    close(fd);
    return 0;
}
static int cmd_probeat(int argc, char **argv)
{
    (void)argc;
    int d = open(argv[2], O_RDONLY | O_DIRECTORY);
    if (d < 0) die("open dir");
    int fd = openat(d, argv[3], O_RDONLY);
    if (fd < 0) { printf("openat = -1 %s\n", errname(errno)); return 0; }
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo(argv[3], fd);
    close(fd);
    close(d);
    return 0;
}

static int cmd_getfl(char **argv)
{
    struct { const char *n; int f; } sets[] = {
        {"RDONLY", O_RDONLY}, {"WRONLY|CREAT", O_WRONLY | O_CREAT}, {"RDWR", O_RDWR},
        {"RDWR|APPEND", O_RDWR | O_APPEND}, {"RDONLY|NONBLOCK", O_RDONLY | O_NONBLOCK},
        {"WRONLY|SYNC", O_WRONLY | O_SYNC}, {"RDWR|DSYNC", O_RDWR | O_DSYNC},
        {"RDWR|DIRECT", O_RDWR | O_DIRECT}, {"RDONLY|NOATIME", O_RDONLY | O_NOATIME},
        {"RDWR|CLOEXEC", O_RDWR | O_CLOEXEC}, {"WRONLY|APPEND|SYNC", O_WRONLY | O_APPEND | O_SYNC},
    };
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        int fd = open(argv[2], sets[i].f, 0644);
        if (fd < 0) { printf("open %s = -1 %s\n", sets[i].n, errname(errno)); continue; }
        printf("open %s getfl=0%o\n", sets[i].n, fcntl(fd, F_GETFL));
        print_fdinfo(sets[i].n, fd);
        /* dup shares the description: same answer */
        int d = dup(fd);
        printf("  dup getfl=0%o\n", fcntl(d, F_GETFL));
        close(d);
        close(fd);
    }
    return 0;
}

static void try_read(const char *label, int fd, size_t len, size_t mis, long long off)
{
    char *b = (char *)xalloc(len, mis);
    errno = 0;
    ssize_t n = off < 0 ? read(fd, b, len) : pread(fd, b, len, off);
    int e = errno;
    printf("%s", label);
    if (n < 0) printf(" = -1 %s", errname(e));
    else printf(" = %zd h=%016llx", n, (unsigned long long)fnv1a(FNV_INIT, b, (size_t)n));
    printf(" pos=%lld\n", (long long)lseek(fd, 0, SEEK_CUR));
}
static void try_write(const char *label, int fd, size_t len, size_t mis, long long off)
{
    char *b = (char *)xalloc(len, mis);
    gen_fill(3, 0, b, len);
    errno = 0;
    ssize_t n = off < 0 ? write(fd, b, len) : pwrite(fd, b, len, off);
    int e = errno;
    printf("%s", label);
    if (n < 0) printf(" = -1 %s", errname(e));
    else printf(" = %zd", n);
    printf(" pos=%lld\n", (long long)lseek(fd, 0, SEEK_CUR));
}

static int cmd_explicit_direct(char **argv)
{
    int fd = open(argv[2], O_RDWR | O_DIRECT);
    if (fd < 0) { printf("open RDWR|DIRECT = -1 %s\n", errname(errno)); return 0; }
    printf("open RDWR|DIRECT getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("explicit", fd);
    try_read("read(+1,1000)", fd, 1000, 1, -1);
    try_read("pread(+0,4096,@4096)", fd, 4096, 0, 4096);
    try_read("pread(+0,4096,@512)", fd, 4096, 0, 512);
    try_read("pread(+512,4096,@0)", fd, 4096, 512, 0);
    try_read("pread(+0,1000,@0)", fd, 1000, 0, 0);
    try_read("pread(+0,8192,@8192)", fd, 8192, 0, 8192);
    try_write("pwrite(+1,1000,@0)", fd, 1000, 1, 0);
    try_write("pwrite(+0,4096,@4096)", fd, 4096, 0, 4096);
    try_write("pwrite(+0,4096,@100)", fd, 4096, 0, 100);
    /* the program clears its own O_DIRECT: buffered from now on */
    int fl = fcntl(fd, F_GETFL);
    RES("F_SETFL(clear DIRECT)", fcntl(fd, F_SETFL, fl & ~O_DIRECT));
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("explicit-cleared", fd);
    try_read("read(+1,1000)", fd, 1000, 1, -1);
    try_write("pwrite(+1,1000,@3)", fd, 1000, 1, 3);
    close(fd);
    /* a second descriptor: the program sets O_DIRECT with F_SETFL */
    fd = open(argv[2], O_RDWR);
    fl = fcntl(fd, F_GETFL);
    printf("plain open getfl=0%o\n", fl);
    errno = 0;
    RES("F_SETFL(add DIRECT)", fcntl(fd, F_SETFL, fl | O_DIRECT));
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("setfl-direct", fd);
    try_read("read(+1,1000)", fd, 1000, 1, -1);
    try_read("pread(+0,4096,@512)", fd, 4096, 0, 512);
    try_read("pread(+0,4096,@4096)", fd, 4096, 0, 4096);
    try_write("pwrite(+3,777,@5)", fd, 777, 3, 5);
    close(fd);
    print_file("final", argv[2]);
    return 0;
}

static int cmd_setfl(char **argv)
{
    int fd = xopen(argv[2], O_RDWR, 0);
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("opened", fd);
    RES("F_SETFL(APPEND|NONBLOCK)", fcntl(fd, F_SETFL, O_APPEND | O_NONBLOCK));
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("after-setfl", fd);
    try_write("write(+1,1001)", fd, 1001, 1, -1);
    try_write("pwrite(+5,4097,@10)", fd, 4097, 5, 10); /* O_APPEND: Linux appends */
    RES("F_SETFL(0)", fcntl(fd, F_SETFL, 0));
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("after-setfl0", fd);
    try_write("pwrite(+7,3333,@12345)", fd, 3333, 7, 12345);
    RES("lseek(0,SET)", lseek(fd, 0, SEEK_SET));
    try_read("read(+3,70001)", fd, 70001, 3, -1);
    /* F_SETFL with O_DIRECT|O_SYNC-free flags keeps working on a dup too */
    int d = dup(fd);
    RES("F_SETFL(dup,NONBLOCK)", fcntl(d, F_SETFL, O_NONBLOCK));
    printf("getfl orig=0%o dup=0%o\n", fcntl(fd, F_GETFL), fcntl(d, F_GETFL));
    print_fdinfo("dup-after-setfl", d);
    close(d);
    close(fd);
    print_file("final", argv[2]);
    return 0;
}

static int cmd_dup(char **argv)
{
    int fd = xopen(argv[2], O_RDWR, 0);
    print_fdinfo("orig", fd);
    try_read("read(orig,+1,1000)", fd, 1000, 1, -1);
    int d1 = dup(fd);
    try_read("read(dup,+3,1000)", d1, 1000, 3, -1);
    show_pos("orig", fd);
    print_fdinfo("dup", d1);
    RES("dup2(orig,50)", dup2(fd, 50));
    RES("dup3(orig,51,CLOEXEC)", dup3(fd, 51, O_CLOEXEC));
    int d52 = fcntl(fd, F_DUPFD_CLOEXEC, 52);
    RES("F_DUPFD_CLOEXEC(orig,52)", d52);
    int d60 = fcntl(fd, F_DUPFD, 60);
    RES("F_DUPFD(orig,60)", d60);
    printf("cloexec 50=%d 51=%d 52=%d 60=%d\n", fcntl(50, F_GETFD), fcntl(51, F_GETFD), fcntl(52, F_GETFD), fcntl(60, F_GETFD));
    print_fdinfo("dup2-50", 50);
    print_fdinfo("dup3-51", 51);
    try_write("write(50,+1,5001)", 50, 5001, 1, -1);
    show_pos("orig", fd);
    try_read("read(51,+2,4097)", 51, 4097, 2, -1);
    show_pos("52", 52);
    RES("close(orig)", close(fd));
    try_read("read(dup-after-close-orig,+1,1000)", d1, 1000, 1, -1);
    /* dup2 a pipe over the tracked d1: it must behave as a pipe */
    int p[2];
    if (pipe(p) < 0) die("pipe");
    RES("dup2(pipe-w,dup)", dup2(p[1], d1) == d1);
    print_fdinfo("pipe-over-dup", d1);
    {
        char *b = mbuf(4097, 1), *r = mbuf(4097, 3);
        gen_fill(5, 0, b, 4097);
        RES("write(pipe-over-dup,4097)", write(d1, b, 4097));
        ssize_t got = 0, n;
        while (got < 4097 && (n = read(p[0], r + got, 4097 - got)) > 0) got += n;
        printf("pipe read %zd same=%d\n", got, memcmp(b, r, 4097) == 0);
        errno = 0;
        RES("lseek(pipe-over-dup)", lseek(d1, 0, SEEK_CUR));
    }
    /* dup3 a socket over tracked fd 50 */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
    RES("dup3(sock,50)", dup3(sv[0], 50, 0) == 50);
    print_fdinfo("sock-over-50", 50);
    {
        char *b = mbuf(3001, 1), *r = mbuf(3001, 1);
        gen_fill(6, 0, b, 3001);
        RES("write(sock-over-50,3001)", write(50, b, 3001));
        ssize_t got = 0, n;
        while (got < 3001 && (n = read(sv[1], r + got, 3001 - got)) > 0) got += n;
        printf("sock read %zd same=%d\n", got, memcmp(b, r, 3001) == 0);
        RES("pread(sock-over-50)", pread(50, r, 10, 0));
    }
    /* close_range over tracked 51..52, then reuse 51 with memfd */
    RES("close_range(51,52)", close_range(51, 52, 0));
    RES("read(51 closed)", read(51, mbuf(10, 0), 10));
    int mfd = memfd_create("fdsem", 0);
    if (mfd < 0) die("memfd_create");
    RES("dup2(memfd,51)", dup2(mfd, 51) == 51);
    print_fdinfo("memfd-at-51", 51);
    try_write("write(memfd51,+1,10001)", 51, 10001, 1, -1);
    try_read("pread(memfd51,+3,5000,@17)", 51, 5000, 3, 17);
    /* tracked 60 is still the file */
    try_read("pread(60,+1,3000,@1)", d60, 3000, 1, 1);
    /* closefrom(3): every tracked fd goes; numbers are then reused */
    closefrom(3);
    RES("read(60 after closefrom)", read(60, mbuf(10, 0), 10));
    int e = eventfd(0, 0);
    if (e < 0) die("eventfd");
    RES("dup2(eventfd,60)", dup2(e, 60) == 60);
    uint64_t v = 41;
    RES("write(eventfd60,8)", write(60, &v, 8));
    v = 0;
    RES("read(eventfd60,8)", read(60, &v, 8));
    printf("eventfd value=%llu\n", (unsigned long long)v);
    fd = xopen(argv[2], O_RDONLY, 0);
    print_fdinfo("reopen", fd);
    try_read("read(reopen,+1,100000)", fd, 100000, 1, -1);
    close(fd);
    print_file("final", argv[2]);
    return 0;
}

static void exercise_eventfd(const char *label, int fd)
{
    print_fdinfo(label, fd);
    uint64_t v = 7;
    ssize_t w = write(fd, &v, 8);
    v = 0;
    ssize_t r = read(fd, &v, 8);
    printf("%s write8=%zd read8=%zd v=%llu\n", label, w, r, (unsigned long long)v);
    errno = 0;
    w = write(fd, &v, 7);
    printf("%s write7=%zd %s\n", label, w, w < 0 ? errname(errno) : "");
}

static int cmd_reuse(char **argv)
{
    /* 1. a tracked fd (opened through the interposed open) closed inside glibc by fclose */
    int fd = xopen(argv[2], O_RDONLY, 0);
    int num = fd;
    try_read("read(+1,1000)", fd, 1000, 1, -1);
    FILE *f = fdopen(fd, "r");
    if (!f) die("fdopen");
    char sb[5000];
    size_t n = fread(sb, 1, 4097, f);
    printf("fread=%zu h=%016llx\n", n, (unsigned long long)fnv1a(FNV_INIT, sb, n));
    fclose(f);
    int p[2];
    if (pipe(p) < 0) die("pipe");
    fprintf(stderr, "REUSED pipe %s\n", p[0] == num ? "yes" : "no");
    print_fdinfo("pipe-r", p[0]);
    {
        char *b = mbuf(70001, 1), *r = mbuf(70001, 3);
        gen_fill(8, 0, b, 70001);
        /* the pipe holds 65536: write in two parts around reads */
        ssize_t w1 = write(p[1], b, 4097);
        ssize_t r1 = read(p[0], r, 70001);
        printf("pipe write=%zd read=%zd same=%d\n", w1, r1, r1 == 4097 && !memcmp(b, r, 4097));
        errno = 0;
        RES("lseek(pipe-r)", lseek(p[0], 0, SEEK_CUR));
        RES("pread(pipe-r)", pread(p[0], r, 10, 0));
    }
    close(p[0]);
    close(p[1]);

    /* 2. fopen+fclose of the matched file, then socketpair at that number */
    f = fopen(argv[2], "r");
    if (!f) die("fopen");
    num = fileno(f);
    n = fread(sb, 1, 1001, f);
    printf("fopen fread=%zu h=%016llx\n", n, (unsigned long long)fnv1a(FNV_INIT, sb, n));
    fclose(f);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
    fprintf(stderr, "REUSED socket %s\n", sv[0] == num ? "yes" : "no");
    print_fdinfo("socket", sv[0]);
    {
        char *b = mbuf(9999, 1), *r = mbuf(9999, 1);
        gen_fill(9, 0, b, 9999);
        ssize_t w = write(sv[0], b, 9999), got = 0, k;
        while (got < w && (k = read(sv[1], r + got, (size_t)(w - got))) > 0) got += k;
        ssize_t w2 = write(sv[1], b, 333), r2 = read(sv[0], r, 9999);
        printf("socket write=%zd read=%zd same=%d back write=%zd read=%zd\n", w, got, !memcmp(b, r, 9999), w2, r2);
    }
    close(sv[0]);
    close(sv[1]);

    /* 3. tracked fd, fdopen+fclose, memfd_create at that number */
    fd = xopen(argv[2], O_RDONLY, 0);
    num = fd;
    try_read("read(+5,3000)", fd, 3000, 5, -1);
    f = fdopen(fd, "r");
    fclose(f);
    int m = memfd_create("reuse", 0);
    fprintf(stderr, "REUSED memfd %s\n", m == num ? "yes" : "no");
    print_fdinfo("memfd", m);
    try_write("write(memfd,+1,12345)", m, 12345, 1, -1);
    try_write("pwrite(memfd,+2,1001,@77)", m, 1001, 2, 77);
    try_read("pread(memfd,+3,20000,@3)", m, 20000, 3, 3);
    RES("ftruncate(memfd,5000)", ftruncate(m, 5000));
    RES("lseek(memfd,0,END)", lseek(m, 0, SEEK_END));
    close(m);

    /* 4. tracked fd, fdopen+fclose, eventfd at that number */
    fd = xopen(argv[2], O_RDONLY, 0);
    num = fd;
    try_read("read(+1,777)", fd, 777, 1, -1);
    f = fdopen(fd, "r");
    fclose(f);
    int e = eventfd(3, 0);
    fprintf(stderr, "REUSED eventfd %s\n", e == num ? "yes" : "no");
    exercise_eventfd("eventfd", e);
    close(e);

    /* 5. tracked fd, fdopen+fclose, an unmatched regular file at that number */
    fd = xopen(argv[2], O_RDONLY, 0);
    num = fd;
    try_read("read(+1,4095)", fd, 4095, 1, -1);
    f = fdopen(fd, "r");
    fclose(f);
    int o = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (o < 0) die("open other");
    fprintf(stderr, "REUSED other %s\n", o == num ? "yes" : "no");
    print_fdinfo("other", o);
    printf("other getfl=0%o\n", fcntl(o, F_GETFL));
    try_write("write(other,+1,5555)", o, 5555, 1, -1);
    try_read("pread(other,+1,5555,@0)", o, 5555, 1, 0);
    close(o);
    print_file("other", argv[3]);
    return 0;
}

static int cmd_copy(char **argv)
{
    char d2[4096], d3[4096];
    snprintf(d2, sizeof d2, "%s.2", argv[3]);
    snprintf(d3, sizeof d3, "%s.3", argv[3]);
    int s = xopen(argv[2], O_RDONLY, 0);
    struct stat st;
    fstat(s, &st);
    int d = xopen(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    /* (a) copy_file_range with file offsets, whole file */
    long long total = 0;
    for (int i = 0; i < 1000; i++) {
        errno = 0;
        ssize_t r = copy_file_range(s, NULL, d, NULL, (size_t)st.st_size + 10, 0);
        int e = errno;
        res("copy_file_range(NULL,NULL,size+10)", r, e);
        if (r <= 0) break;
        total += r;
    }
    show_pos("src", s);
    show_pos("dst", d);
    /* (b) explicit offsets, odd */
    loff_t oi = 4097, oo = 1001;
    errno = 0;
    ssize_t r = copy_file_range(s, &oi, d, &oo, 500001, 0);
    RES("copy_file_range(@4097,@1001,500001)", r);
    printf("off_in=%lld off_out=%lld\n", (long long)oi, (long long)oo);
    show_pos("src", s);
    show_pos("dst", d);
    /* (c) beyond EOF of the source */
    oi = st.st_size - 3;
    oo = st.st_size + 5000;
    errno = 0;
    r = copy_file_range(s, &oi, d, &oo, 100, 0);
    RES("copy_file_range(@size-3,@size+5000,100)", r);
    close(d);
    print_file("dst", argv[3]);

    /* sendfile: explicit offset, then the file position, then sendfile64 */
    d = xopen(d2, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    off_t so = 12345;
    errno = 0;
    r = sendfile(d, s, &so, 777777);
    RES("sendfile(@12345,777777)", r);
    printf("offset=%lld\n", (long long)so);
    lseek(s, 3, SEEK_SET);
    errno = 0;
    r = sendfile(d, s, NULL, 100001);
    RES("sendfile(NULL,100001)", r);
    show_pos("src", s);
    off64_t so64 = 999;
    errno = 0;
    r = sendfile64(d, s, &so64, 65537);
    RES("sendfile64(@999,65537)", r);
    printf("offset=%lld\n", (long long)so64);
    show_pos("dst2", d);
    close(d);
    print_file("dst2", d2);

    /* splice: file -> pipe -> file */
    d = xopen(d3, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int p[2];
    if (pipe(p) < 0) die("pipe");
    loff_t in = 7;
    long long moved = 0;
    for (int i = 0; i < 100000; i++) {
        errno = 0;
        ssize_t a = splice(s, &in, p[1], NULL, 65536 + 3, 0);
        if (a < 0) { RES("splice(file->pipe)", a); break; }
        if (a == 0) break;
        ssize_t left = a;
        while (left > 0) {
            errno = 0;
            ssize_t b = splice(p[0], NULL, d, NULL, (size_t)left, 0);
            if (b <= 0) { RES("splice(pipe->file)", b); left = 0; break; }
            left -= b;
        }
        moved += a;
    }
    printf("splice moved=%lld in=%lld\n", moved, (long long)in);
    show_pos("src", s);
    show_pos("dst3", d);
    /* and the file position form */
    lseek(s, 100, SEEK_SET);
    errno = 0;
    ssize_t a = splice(s, NULL, p[1], NULL, 5001, 0);
    RES("splice(file@pos->pipe,5001)", a);
    show_pos("src", s);
    if (a > 0) {
        errno = 0;
        RES("splice(pipe->file,all)", splice(p[0], NULL, d, NULL, (size_t)a, 0));
    }
    show_pos("dst3", d);
    close(d);
    close(s);
    print_file("dst3", d3);
    return 0;
}

static int cmd_cfr(char **argv)
{
    int s = xopen(argv[2], O_RDONLY, 0);
    int d = xopen(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    long long total = 0;
    ssize_t r;
    while ((r = copy_file_range(s, NULL, d, NULL, 1 << 30, 0)) > 0) total += r;
    if (r < 0) printf("copy_file_range = -1 %s\n", errname(errno));
    printf("copied=%lld\n", total);
    close(s);
    close(d);
    return 0;
}

static int cmd_fork(char **argv)
{
    int fd = xopen(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
    int rfd = xopen(argv[2], O_RDONLY, 0);
    try_write("parent write(+1,3001)", fd, 3001, 1, -1);
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        try_write("child write(+3,4097)", fd, 4097, 3, -1);
        try_write("child pwrite(+1,999,@100)", fd, 999, 1, 100);
        try_read("child read(rfd,+1,5000)", rfd, 5000, 1, -1);
        int own = xopen(argv[2], O_RDWR, 0);
        try_write("child own pwrite(+2,12345,@7000)", own, 12345, 2, 7000);
        close(own);
        print_fdinfo("child-inherited", fd);
        fflush(stdout);
        exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    printf("child status=%d\n", st);
    show_pos("parent fd", fd);
    show_pos("parent rfd", rfd);
    try_write("parent write(+1,1000)", fd, 1000, 1, -1);
    try_read("parent read(rfd,+1,100000)", rfd, 100000, 1, -1);
    print_fdinfo("parent", fd);
    /* a second generation */
    fflush(stdout);
    c = fork();
    if (c == 0) {
        pid_t g = fork();
        if (g == 0) {
            try_write("grandchild write(+5,65537)", fd, 65537, 5, -1);
            fflush(stdout);
            _exit(0);
        }
        waitpid(g, NULL, 0);
        try_write("child2 write(+1,11)", fd, 11, 1, -1);
        fflush(stdout);
        _exit(0);
    }
    waitpid(c, &st, 0);
    show_pos("parent fd", fd);
    close(fd);
    close(rfd);
    print_file("final", argv[2]);
    return 0;
}

static int cmd_exec(int argc, char **argv)
{
    if (argc < 6) { fprintf(stderr, "usage: fdsem exec w|r VIA PATH CMD...\n"); return 2; }
    int w = argv[2][0] == 'w';
    const char *via = argv[3], *path = argv[4];
    char **cmd = argv + 5;
    int fd = w ? xopen(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : xopen(path, O_RDONLY, 0);
    if (fd != 5) {
        if (dup2(fd, 5) < 0) die("dup2");
        close(fd);
    }
    if (w) try_write("before write(+1,1001)", 5, 1001, 1, -1);
    else try_read("before read(+1,1001)", 5, 1001, 1, -1);
    print_fdinfo("before-exec", 5);
    fflush(stdout);
    fflush(stderr);
    int st = -1;
    if (!strcmp(via, "system") || !strcmp(via, "popen")) {
        char line[8192] = "";
        for (char **c = cmd; *c; c++) {
            strncat(line, *c, sizeof line - strlen(line) - 2);
            strcat(line, " ");
        }
        if (!strcmp(via, "system")) {
            st = system(line);
        } else {
            FILE *p = popen(line, "r");
            char buf[4096];
            size_t n, tot = 0;
            uint64_t h = FNV_INIT;
            while ((n = fread(buf, 1, sizeof buf, p)) > 0) { h = fnv1a(h, buf, n); tot += n; }
            st = pclose(p);
            printf("popen output bytes=%zu fnv=%016llx\n", tot, (unsigned long long)h);
        }
    } else if (!strncmp(via, "posix_spawn", 11)) {
        pid_t pid;
        int r = !strcmp(via, "posix_spawnp") ? posix_spawnp(&pid, cmd[0], NULL, NULL, cmd, environ)
                                             : posix_spawn(&pid, cmd[0], NULL, NULL, cmd, environ);
        if (r) { printf("%s failed %s\n", via, errname(r)); return 1; }
        waitpid(pid, &st, 0);
    } else {
        pid_t pid = fork();
        if (pid == 0) {
            if (!strcmp(via, "execv")) execv(cmd[0], cmd);
            else if (!strcmp(via, "execvp")) execvp(cmd[0], cmd);
            else if (!strcmp(via, "execve")) execve(cmd[0], cmd, environ);
            else if (!strcmp(via, "execvpe")) execvpe(cmd[0], cmd, environ);
            else if (!strcmp(via, "execl")) execl(cmd[0], cmd[0], cmd[1], cmd[2], cmd[3], cmd[4], cmd[5], cmd[6], (char *)NULL);
            else if (!strcmp(via, "execlp")) execlp(cmd[0], cmd[0], cmd[1], cmd[2], cmd[3], cmd[4], cmd[5], cmd[6], (char *)NULL);
            _exit(127);
        }
        waitpid(pid, &st, 0);
    }
    printf("helper status=%d\n", st);
    show_pos("after", 5);
    print_fdinfo("after-exec", 5);
    if (w) try_write("after write(+3,777)", 5, 777, 3, -1);
    else try_read("after read(+1,100000)", 5, 100000, 1, -1);
    close(5);
    print_file("final", path);
    return 0;
}

/* --- signal handler writes --- */
static volatile sig_atomic_t sig_count, sig_fail;
static int sig_fd = -1, sig_same = 0;
static char sig_rec[37];
static void on_timer(int s)
{
    (void)s;
    int saved = errno;
    ssize_t w;
    if (sig_same) w = pwrite(sig_fd, sig_rec, sizeof sig_rec, 8 * 1048576 + (off_t)sig_count * (off_t)sizeof sig_rec);
    else w = write(sig_fd, sig_rec, sizeof sig_rec);
    if (w != (ssize_t)sizeof sig_rec) sig_fail++;
    else sig_count++;
    errno = saved;
}
static int cmd_sigwrite(char **argv)
{
    sig_same = !strcmp(argv[2], "same");
    const char *p1 = argv[3], *p2 = argv[4];
    long iters = atol(argv[5]);
    for (int i = 0; i < 37; i++) sig_rec[i] = (char)('a' + i % 26);
    sig_rec[36] = '\n';
    int fa = xopen(p1, O_RDWR | O_CREAT | O_TRUNC, 0644);
    sig_fd = sig_same ? fa : xopen(p2, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_timer;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 200}, {0, 200}};
    setitimer(ITIMER_REAL, &it, NULL);
    char *b = mbuf(9000, 1), *r = mbuf(9000, 3);
    long long off = 0, bad = 0;
    for (long i = 0; i < iters; i++) {
        size_t len = 1000 + (size_t)(i * 613) % 5000;
        gen_fill(21, (uint64_t)off, b, len);
        if (pwrite(fa, b, len, off) != (ssize_t)len) bad++;
        if (pread(fa, r, len, off) != (ssize_t)len || memcmp(b, r, len)) bad++;
        off += (long long)len;
        if (off > 4 * 1048576) off = 0;
    }
    struct itimerval z = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &z, NULL);
    long cnt = sig_count;
    /* verify the handler's records */
    long badrec = 0;
    char rb[37];
    for (long i = 0; i < cnt; i++) {
        off_t o = sig_same ? 8 * 1048576 + (off_t)i * 37 : (off_t)i * 37;
        int fdr = sig_same ? fa : open(p2, O_RDONLY);
        if (pread(fdr, rb, 37, o) != 37 || memcmp(rb, sig_rec, 37)) badrec++;
        if (!sig_same) close(fdr);
    }
    struct stat st;
    fstat(sig_fd, &st);
    long long expect = sig_same ? 8 * 1048576 + (long long)cnt * 37 : (long long)cnt * 37;
    if (sig_same && cnt == 0) expect = st.st_size;
    if (bad || badrec || sig_fail || st.st_size != expect || cnt == 0)
        printf("BAD main_bad=%lld handler_records=%ld bad_records=%ld handler_failures=%d size=%lld expected=%lld\n",
               bad, cnt, badrec, (int)sig_fail, (long long)st.st_size, expect);
    else
        printf("OK main writes verified, handler records verified\n");
    fprintf(stderr, "handler records=%ld\n", cnt);
    return 0;
}

static int cmd_tmpfile(char **argv)
{
    int fd = open(argv[2], O_TMPFILE | O_RDWR, 0600);
    if (fd < 0) { printf("open O_TMPFILE = -1 %s\n", errname(errno)); return 0; }
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("tmpfile", fd);
    try_write("write(+1,1000)", fd, 1000, 1, -1);
    try_write("write(+3,4097)", fd, 4097, 3, -1);
    try_write("write(+0,70001)", fd, 70001, 0, -1);
    try_write("pwrite(+1,10,@5)", fd, 10, 1, 5);
    try_read("pread(+1,80000,@0)", fd, 80000, 1, 0);
    char proc[64], dst[4096];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    snprintf(dst, sizeof dst, "%s/%s", argv[2], argv[3]);
    RES("linkat", linkat(AT_FDCWD, proc, AT_FDCWD, dst, AT_SYMLINK_FOLLOW));
    try_write("write(after link,+1,333)", fd, 333, 1, -1);
    close(fd);
    print_file("linked", dst);
    return 0;
}

static int cmd_excl(char **argv)
{
    errno = 0;
    int fd = open(argv[2], O_CREAT | O_EXCL | O_RDWR, 0644);
    res("open(CREAT|EXCL|RDWR)", fd >= 0 ? 0 : -1, errno);
    if (fd < 0) return 0;
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("excl", fd);
    try_write("write(+1,5001)", fd, 5001, 1, -1);
    try_write("write(+0,8192)", fd, 8192, 0, -1);
    try_read("pread(+1,20000,@0)", fd, 20000, 1, 0);
    errno = 0;
    int fd2 = open(argv[2], O_CREAT | O_EXCL | O_RDWR, 0644);
    res("open again(CREAT|EXCL)", fd2 >= 0 ? 0 : -1, errno);
    errno = 0;
    int fd3 = open(argv[2], O_CREAT | O_EXCL | O_WRONLY | O_DIRECT, 0644);
    res("open again(CREAT|EXCL|DIRECT)", fd3 >= 0 ? 0 : -1, errno);
    close(fd);
    print_file("final", argv[2]);
    return 0;
}

static int lock_holder_is_parent(const char *path, pid_t parent)
{
    pid_t c = fork();
    if (c == 0) {
        int f = open(path, O_RDONLY);
        struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (f < 0 || fcntl(f, F_GETLK, &fl) < 0) _exit(2);
        _exit(fl.l_type == F_WRLCK && fl.l_pid == parent ? 0 : 1);
    }
    int st;
    waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 3;
}
static int cmd_locks(char **argv)
{
    int fd = xopen(argv[2], O_RDWR | O_CREAT, 0644);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    RES("F_SETLK(WRLCK)", fcntl(fd, F_SETLK, &fl));
    printf("lock seen by another process: %s\n", lock_holder_is_parent(argv[2], getpid()) == 0 ? "yes" : "no");
    try_write("pwrite(+1,1000,@100)", fd, 1000, 1, 100);
    try_write("pwrite(+3,10000,@4000)", fd, 10000, 3, 4000);
    try_write("write(+1,4097)", fd, 4097, 1, -1);
    try_read("pread(+1,5000,@3)", fd, 5000, 1, 3);
    RES("fsync", fsync(fd));
    RES("ftruncate(20001)", ftruncate(fd, 20001));
    printf("after I/O, lock seen by another process: %s\n", lock_holder_is_parent(argv[2], getpid()) == 0 ? "yes" : "no");
    /* a second descriptor of the same file used and kept open: locks stay */
    int fd2 = xopen(argv[2], O_RDONLY, 0);
    try_read("pread(fd2,+1,3000,@1)", fd2, 3000, 1, 1);
    printf("after 2nd fd I/O, lock seen by another process: %s\n", lock_holder_is_parent(argv[2], getpid()) == 0 ? "yes" : "no");
    close(fd2); /* the program's own close: the kernel drops the locks */
    printf("after program's close of 2nd fd, lock seen: %s\n", lock_holder_is_parent(argv[2], getpid()) == 0 ? "yes" : "no");
    close(fd);
    print_file("final", argv[2]);
    return 0;
}

static int cmd_wronly(char **argv)
{
    umask(0);
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0200);
    if (fd < 0) { printf("open = -1 %s\n", errname(errno)); return 0; }
    printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    print_fdinfo("wronly", fd);
    try_write("write(+1,1000)", fd, 1000, 1, -1);
    try_write("write(+3,4097)", fd, 4097, 3, -1);
    try_write("write(+0,1048579)", fd, 1048579, 0, -1);
    try_write("write(+0,8192)", fd, 8192, 0, -1);
    try_write("pwrite(+1,100,@4000)", fd, 100, 1, 4000);
    try_write("pwrite(+5,9000,@10)", fd, 9000, 5, 10);
    try_write("pwrite(+0,4096,@8192)", fd, 4096, 0, 8192);
    RES("ftruncate(1060000)", ftruncate(fd, 1060000));
    try_write("pwrite(+1,3,@1059998)", fd, 3, 1, 1059998);
    RES("read on O_WRONLY", read(fd, mbuf(10, 0), 10));
    RES("fsync", fsync(fd));
    struct stat st;
    fstat(fd, &st);
    printf("size=%lld mode=%o\n", (long long)st.st_size, st.st_mode & 07777);
    RES("close", close(fd));
    return 0;
}

static int cmd_closefrom_log(char **argv)
{
    int fd = xopen(argv[2], O_RDWR, 0);
    try_read("read(+1,1000)", fd, 1000, 1, -1);
    try_write("pwrite(+1,1000,@5)", fd, 1000, 1, 5);
    closefrom(3);
    int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) die("open out");
    printf("out fd is lowest free: %s\n", out == 3 ? "yes" : "no");
    const char msg[] = "program line 1\n";
    RES("write(out)", write(out, msg, sizeof msg - 1));
    /* more activity on the matched file that a debug log would describe */
    for (int i = 0; i < 3; i++) {
        int f = open(argv[2], O_RDWR);
        try_read("read(+1,3000)", f, 3000, 1, -1);
        try_write("pwrite(+3,5000,@7)", f, 5000, 3, 7);
        close(f);
    }
    closefrom(4);
    int f = open(argv[2], O_RDONLY);
    try_read("read(+1,3000)", f, 3000, 1, -1);
    close(f);
    const char msg2[] = "program line 2\n";
    RES("write(out)", write(out, msg2, sizeof msg2 - 1));
    /* leave `out` open at exit: statistics written at exit must not land in it */
    return 0;
}

static void nonreg_one(const char *label, const char *p, int flags, int do_write)
{
    errno = 0;
    int fd = open(p, flags, 0644);
    if (fd < 0) { printf("%s open = -1 %s\n", label, errname(errno)); return; }
    printf("%s getfl=0%o\n", label, fcntl(fd, F_GETFL));
    print_fdinfo(label, fd);
    if (do_write) {
        char *b = mbuf(4097, 1);
        memset(b, 'x', 4097);
        errno = 0;
        ssize_t w = write(fd, b, 1001);
        printf("%s write(1001) = %zd %s\n", label, w, w < 0 ? errname(errno) : "");
    }
    if (!(flags & O_PATH)) {
        char *b = mbuf(5000, 1);
        errno = 0;
        ssize_t n = read(fd, b, 1001);
        printf("%s read(1001) %s %s\n", label, n > 0 ? ">0" : n == 0 ? "=0" : "=-1", n < 0 ? errname(errno) : "");
    }
    close(fd);
}
static int cmd_nonreg(char **argv)
{
    char p[4096];
    const char *d = argv[2];
    nonreg_one("dir", d, O_RDONLY | O_DIRECTORY, 0);
    snprintf(p, sizeof p, "%s/fifo", d);
    unlink(p);
    if (mkfifo(p, 0666) < 0) die("mkfifo");
    nonreg_one("fifo", p, O_RDWR | O_NONBLOCK, 1);
    snprintf(p, sizeof p, "%s/regular", d);
    int fd = xopen(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    write_all(fd, "hello\n", 6);
    close(fd);
    nonreg_one("opath", p, O_PATH, 0);
    nonreg_one("regular", p, O_RDONLY, 0);
    snprintf(p, sizeof p, "%s/sock", d);
    unlink(p);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(p) >= sizeof a.sun_path) { printf("socket path too long\n"); return 1; }
    memcpy(a.sun_path, p, strlen(p) + 1);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) printf("bind failed %s\n", errname(errno));
    nonreg_one("socketfile", p, O_RDONLY, 0);
    close(s);
    nonreg_one("devnull", "/dev/null", O_RDWR, 1);
    nonreg_one("devzero", "/dev/zero", O_RDONLY, 0);
    nonreg_one("proc", "/proc/self/status", O_RDONLY, 0);
    nonreg_one("sys", "/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY, 0);
    return 0;
}

static int cmd_highfd(char **argv)
{
    int target = atoi(argv[3]);
    int fd = xopen(argv[2], O_RDWR, 0);
    RES("dup2(file,N)==N", dup2(fd, target) == target);
    close(fd);
    print_fdinfo("high", target);
    try_read("read(high,+1,5000)", target, 5000, 1, -1);
    try_write("pwrite(high,+3,4097,@11)", target, 4097, 3, 11);
    try_read("pread(high,+1,10000,@0)", target, 10000, 1, 0);
    close(target);
    fd = xopen(argv[2], O_RDONLY, 0);
    RES("F_DUPFD(file,N-10)>=N-10", fcntl(fd, F_DUPFD, target - 10) >= target - 10);
    try_read("read(low,+1,777)", fd, 777, 1, -1);
    close(fd);
    print_file("final", argv[2]);
    return 0;
}

static int cmd_statsfork(char **argv)
{
    int use_exit = !strcmp(argv[3], "exit");
    int fd = xopen(argv[2], O_RDONLY, 0);
    char *b = mbuf(200000, 1);
    ssize_t a = read(fd, b, 100001);
    printf("parent read %zd\n", a);
    fflush(stdout);
    fprintf(stderr, "PARENT %d\n", (int)getpid());
    fflush(stderr);
    pid_t c = fork();
    if (c == 0) {
        fprintf(stderr, "CHILD %d\n", (int)getpid());
        fflush(stderr);
        int f = xopen(argv[2], O_RDONLY, 0);
        ssize_t n = read(f, b, 50001);
        printf("child read %zd\n", n);
        fflush(stdout);
        if (use_exit) exit(0);
        _exit(0);
    }
    waitpid(c, NULL, 0);
    ssize_t z = read(fd, b, 7);
    printf("parent read %zd\n", z);
    return 0;
}
static int cmd_statsexec(int argc, char **argv)
{
    (void)argc;
    int fd = xopen(argv[2], O_RDONLY, 0);
    char *b = mbuf(200000, 1);
    ssize_t a = read(fd, b, 100001);
    printf("read %zd\n", a);
    fflush(stdout);
    fprintf(stderr, "PID %d\n", (int)getpid());
    fflush(stderr);
    execv(argv[3], argv + 3);
    printf("execv failed %s\n", errname(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: fdsem CMD ARGS (see the comment at the top of fdsem.c)\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *c = argv[1];
    if (!strcmp(c, "probe")) return cmd_probe(argc, argv);
    if (!strcmp(c, "probeat") && argc > 3) return cmd_probeat(argc, argv);
    if (!strcmp(c, "getfl")) return cmd_getfl(argv);
    if (!strcmp(c, "explicit-direct")) return cmd_explicit_direct(argv);
    if (!strcmp(c, "setfl")) return cmd_setfl(argv);
    if (!strcmp(c, "dup")) return cmd_dup(argv);
    if (!strcmp(c, "reuse") && argc > 3) return cmd_reuse(argv);
    if (!strcmp(c, "copy") && argc > 3) return cmd_copy(argv);
    if (!strcmp(c, "cfr") && argc > 3) return cmd_cfr(argv);
    if (!strcmp(c, "fork")) return cmd_fork(argv);
    if (!strcmp(c, "exec")) return cmd_exec(argc, argv);
    if (!strcmp(c, "sigwrite") && argc > 5) return cmd_sigwrite(argv);
    if (!strcmp(c, "tmpfile") && argc > 3) return cmd_tmpfile(argv);
    if (!strcmp(c, "excl")) return cmd_excl(argv);
    if (!strcmp(c, "locks")) return cmd_locks(argv);
    if (!strcmp(c, "wronly")) return cmd_wronly(argv);
    if (!strcmp(c, "closefrom-log") && argc > 3) return cmd_closefrom_log(argv);
    if (!strcmp(c, "nonreg")) return cmd_nonreg(argv);
    if (!strcmp(c, "highfd") && argc > 3) return cmd_highfd(argv);
    if (!strcmp(c, "statsfork") && argc > 3) return cmd_statsfork(argv);
    if (!strcmp(c, "statsexec") && argc > 3) return cmd_statsexec(argc, argv);
    fprintf(stderr, "fdsem: unknown command or missing arguments: %s\n", c);
    return 2;
}
