/* mapadv all PATH      mmap, advice and allocation on one file (created by this program)
 * mapadv willneed PATH posix_fadvise(WILLNEED) and readahead(2) of all of PATH (existing)
 *
 * all: writes PATH (3 MiB + 4097 bytes of known data) with write(), opens it O_RDWR, then
 *   - mmap(PROT_READ, MAP_SHARED) of the whole file and of an odd length at offset 12288,
 *     compared byte for byte with pread() of odd ranges;
 *   - a MAP_PRIVATE writable mapping changed in memory: the file (pread) must not change;
 *   - a MAP_SHARED writable mapping changed at [5000, 8000), msync(MS_SYNC), munmap: pread
 *     must see the change; a pwrite() at [100001, +7777) must be seen by a new mapping;
 *   - posix_fadvise NORMAL SEQUENTIAL RANDOM NOREUSE WILLNEED DONTNEED (return values), an
 *     invalid advice (EINVAL), a bad descriptor (EBADF), a negative length (EINVAL);
 *   - readahead() of the file, of a bad descriptor (EBADF) and of an O_WRONLY one (EBADF);
 *   - fallocate() mode 0 past the end, FALLOC_FL_KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE and
 *     ZERO_RANGE at odd offsets; posix_fallocate()/posix_fallocate64() past the end, over
 *     existing data, with length 0 past the end (glibc: ftruncate), and on an O_WRONLY
 *     descriptor; after each: return value (errno), size and FNV of the whole file (pread).
 *     Where the filesystem has no fallocate (ext4 without extents), glibc's posix_fallocate
 *     writes one zero byte per block with its own pread/pwrite.
 * Every line is deterministic ("<what> = <ret> [<errno>] ..."): a plain run and a run
 * through the shim must print the same. stderr: "FDINFO main fd=<n> flags:\t<octal>" (and
 * "FDINFO wronly ...").
 *
 * willneed: "fadvise WILLNEED = <r>", "readahead = <r>" and FDINFO; the caller measures the
 * page cache of PATH afterwards (it must stay empty through the shim).
 */
#include "common.h"
#include <sys/mman.h>

#define SIZE (3LL * 1048576 + 4097)

static int fd;

static void res(const char *what, long long r, int e)
{
    if (r < 0) printf("%s = %lld %s\n", what, r, errname(e));
    else printf("%s = %lld\n", what, r);
}
/* errno read after the call (an argument list has no order of evaluation) */
#define RES(what, call) do { errno = 0; long long r_ = (long long)(call); res(what, r_, errno); } while (0)
/* posix_fadvise/posix_fallocate return the error number */
static void res_e(const char *what, int r) { printf("%s = %s\n", what, r ? errname(r) : "0"); }

static void file_state(const char *what)
{
    struct stat st;
    fstat(fd, &st);
    char *b = xalloc(1 << 20, 1);
    uint64_t h = FNV_INIT;
    long long off = 0;
    for (;;) {
        ssize_t n = pread(fd, b, 1 << 20, off);
        if (n < 0) { printf("  %s: pread %s\n", what, errname(errno)); return; }
        if (n == 0) break;
        h = fnv1a(h, b, (size_t)n);
        off += n;
    }
    printf("  %s: size=%lld read=%lld fnv=%016llx\n", what, (long long)st.st_size, off, (unsigned long long)h);
    free(b - 1);
}

static int cmp_map_pread(const char *what, const unsigned char *map, long long moff, long long mlen)
{
    unsigned char *b = xalloc(300000, 7);
    rng_t r = {.s = 99};
    int ok = 1;
    for (int i = 0; i < 40 && ok; i++) {
        long long o = (long long)rng_below(&r, (uint64_t)mlen), n = 1 + (long long)rng_below(&r, 299999);
        if (o + n > mlen) n = mlen - o;
        ssize_t got = pread(fd, b, (size_t)n, moff + o);
        if (got != n || memcmp(b, map + o, (size_t)n)) ok = 0;
    }
    printf("%s: mmap equals pread = %d fnv=%016llx\n", what, ok, (unsigned long long)fnv1a(FNV_INIT, map, (size_t)mlen));
    return ok;
}

static int cmd_all(const char *path)
{
    int wfd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (wfd < 0) die("open %s", path);
    unsigned char *b = xalloc(1 << 20, 3);
    for (long long off = 0; off < SIZE;) {
        long long n = off ? 1000003 : 4097;
        if (n > SIZE - off) n = SIZE - off;
        gen_fill(3, (uint64_t)off, b, (size_t)n);
        if (write_all(wfd, b, (size_t)n)) die("write");
        off += n;
    }
    close(wfd);
    fd = open(path, O_RDWR);
    if (fd < 0) die("open %s", path);
    print_fdinfo("main", fd);
    file_state("initial");

    /* read-only shared mappings */
    errno = 0;
    unsigned char *m = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, fd, 0);
    res("mmap(whole,RO,SHARED)", m == MAP_FAILED ? -1 : 0, errno);
    if (m != MAP_FAILED) {
        cmp_map_pread("whole", m, 0, SIZE);
        int ok = 1;
        for (long long i = 0; i < SIZE && ok; i += 4093) ok = m[i] == gen_byte(3, (uint64_t)i);
        printf("whole: mapping has the known data = %d\n", ok);
        RES("munmap(whole)", munmap(m, SIZE));
    }
    errno = 0;
    m = mmap(NULL, 100001, PROT_READ, MAP_SHARED, fd, 12288);
    res("mmap(12288+100001,RO,SHARED)", m == MAP_FAILED ? -1 : 0, errno);
    if (m != MAP_FAILED) {
        cmp_map_pread("part", m, 12288, 100001);
        munmap(m, 100001);
    }
    errno = 0;
    m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 4095);
    res("mmap(unaligned offset)", m == MAP_FAILED ? -1 : 0, errno);

    /* private writable: the file does not change */
    errno = 0;
    m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    res("mmap(whole,RW,PRIVATE)", m == MAP_FAILED ? -1 : 0, errno);
    if (m != MAP_FAILED) {
        memset(m + 1234, 0x77, 50000);
        munmap(m, SIZE);
        file_state("after private change");
    }

    /* shared writable: msync, then pread sees it */
    errno = 0;
    m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    res("mmap(whole,RW,SHARED)", m == MAP_FAILED ? -1 : 0, errno);
    if (m != MAP_FAILED) {
        for (int i = 0; i < 3000; i++) m[5000 + i] = (unsigned char)(i * 13 + 1);
        RES("msync(MS_SYNC)", msync(m, SIZE, MS_SYNC));
        RES("munmap", munmap(m, SIZE));
        unsigned char c[3000];
        ssize_t n = pread(fd, c, 3000, 5000);
        int ok = n == 3000;
        for (int i = 0; ok && i < 3000; i++) ok = c[i] == (unsigned char)(i * 13 + 1);
        printf("pread sees the shared mapping's change = %d\n", ok);
    }
    /* pwrite, then a new mapping sees it */
    unsigned char *w = xalloc(7777, 1);
    for (int i = 0; i < 7777; i++) w[i] = (unsigned char)(i * 7 + 5);
    RES("pwrite(100001,7777)", pwrite(fd, w, 7777, 100001));
    m = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
        printf("new mapping sees the pwrite = %d\n", !memcmp(m + 100001, w, 7777));
        cmp_map_pread("after pwrite", m, 0, SIZE);
        munmap(m, SIZE);
    }
    file_state("after mappings");

    /* advice */
    static const struct { int a; const char *n; } adv[] = {
        {POSIX_FADV_NORMAL, "NORMAL"},     {POSIX_FADV_SEQUENTIAL, "SEQUENTIAL"}, {POSIX_FADV_RANDOM, "RANDOM"},
        {POSIX_FADV_NOREUSE, "NOREUSE"},   {POSIX_FADV_WILLNEED, "WILLNEED"},     {POSIX_FADV_DONTNEED, "DONTNEED"},
    };
    char what[96];
    for (size_t i = 0; i < sizeof adv / sizeof adv[0]; i++) {
        snprintf(what, sizeof what, "posix_fadvise(%s,0,0)", adv[i].n);
        res_e(what, posix_fadvise(fd, 0, 0, adv[i].a));
        snprintf(what, sizeof what, "posix_fadvise(%s,4097,100003)", adv[i].n);
        res_e(what, posix_fadvise(fd, 4097, 100003, adv[i].a));
    }
    res_e("posix_fadvise(12345)", posix_fadvise(fd, 0, 0, 12345));
    res_e("posix_fadvise(badfd,WILLNEED)", posix_fadvise(1000000, 0, 0, POSIX_FADV_WILLNEED));
    res_e("posix_fadvise(WILLNEED,len=-1)", posix_fadvise(fd, 0, -1, POSIX_FADV_WILLNEED));
    RES("readahead(0,SIZE)", readahead(fd, 0, SIZE));
    RES("readahead(4097,100003)", readahead(fd, 4097, 100003));
    RES("readahead(badfd)", readahead(1000000, 0, 4096));
    int wo = open(path, O_WRONLY);
    print_fdinfo("wronly", wo);
    RES("readahead(O_WRONLY)", readahead(wo, 0, 4096));
    file_state("after advice");

    /* allocation */
    RES("fallocate(0,SIZE,65543)", fallocate(fd, 0, SIZE, 65543));
    file_state("after fallocate");
    RES("fallocate(KEEP_SIZE,SIZE+65543,100000)", fallocate(fd, FALLOC_FL_KEEP_SIZE, SIZE + 65543, 100000));
    file_state("after fallocate KEEP_SIZE");
    RES("fallocate(PUNCH_HOLE|KEEP_SIZE,8193,12345)", fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8193, 12345));
    file_state("after punch hole");
    RES("fallocate(ZERO_RANGE,50001,20000)", fallocate(fd, FALLOC_FL_ZERO_RANGE, 50001, 20000));
    file_state("after zero range");
    struct stat st;
    fstat(fd, &st);
    long long sz = st.st_size;
    res_e("posix_fallocate(end+100000,50001)", posix_fallocate(fd, sz + 100000, 50001));
    file_state("after posix_fallocate past the end");
    res_e("posix_fallocate(1000,300001)", posix_fallocate(fd, 1000, 300001));
    file_state("after posix_fallocate over data");
    fstat(fd, &st);
    res_e("posix_fallocate64(end+4097,0)", posix_fallocate64(fd, st.st_size + 4097, 0));
    file_state("after posix_fallocate64 length 0");
    fstat(fd, &st);
    res_e("posix_fallocate64(end-5000,70001)", posix_fallocate64(fd, st.st_size - 5000, 70001));
    file_state("after posix_fallocate64 across the end");
    fstat(fd, &st);
    res_e("posix_fallocate(O_WRONLY,end+10,9999)", posix_fallocate(wo, st.st_size + 10, 9999));
    file_state("after posix_fallocate on O_WRONLY past the end");
    res_e("posix_fallocate(O_WRONLY,100,9999)", posix_fallocate(wo, 100, 9999));
    file_state("after posix_fallocate on O_WRONLY over data");
    res_e("posix_fallocate(badfd)", posix_fallocate(1000000, 0, 10));
    close(wo);

    /* the final content through a fresh mapping and through pread must agree */
    fstat(fd, &st);
    m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
        cmp_map_pread("final", m, 0, st.st_size);
        munmap(m, (size_t)st.st_size);
    }
    close(fd);
    return 0;
}

static int cmd_willneed(const char *path)
{
    fd = open(path, O_RDONLY);
    if (fd < 0) die("open %s", path);
    print_fdinfo("main", fd);
    struct stat st;
    fstat(fd, &st);
    res_e("fadvise WILLNEED", posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED));
    res_e("fadvise WILLNEED range", posix_fadvise(fd, 4097, st.st_size / 2, POSIX_FADV_WILLNEED));
    RES("readahead", readahead(fd, 0, (size_t)st.st_size));
    /* give asynchronous readahead time to land, so the caller's measurement means something */
    usleep(300000);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: mapadv all|willneed PATH\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "all")) return cmd_all(argv[2]);
    if (!strcmp(argv[1], "willneed")) return cmd_willneed(argv[2]);
    fprintf(stderr, "mapadv: unknown mode %s\n", argv[1]);
    return 2;
}
