/* rawio PATH: I/O the library cannot see, on a file opened with libc's open (so the library
 * manages it): raw syscall() read/pwrite/pread/copy_file_range and Linux native AIO
 * (io_setup/io_submit/io_getevents as raw system calls, as libaio does), all with misaligned
 * buffers, offsets and lengths. Prints deterministic results on stdout, compared between a
 * plain run and a run under the library; exit 0 unless setup fails. PATH.copy is written. */
#include "common.h"
#include <linux/aio_abi.h>
#include <sys/syscall.h>

static void show(const char *what, long r)
{
    printf("%s = %ld%s%s\n", what, r < 0 ? -1L : r, r < 0 ? " " : "", r < 0 ? errname(errno) : "");
}

int main(int argc, char **argv)
{
    if (argc != 2) die("usage: rawio PATH");
    const char *path = argv[1];
    char copy[4096];
    snprintf(copy, sizeof copy, "%s.copy", path);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open %s", path);
    maybe_fdinfo("rawio", fd);
    size_t n = 3 * 1048576 + 12345;
    unsigned char *w = xalloc(n + 64, 7), *r = xalloc(n + 64, 13);
    gen_fill(42, 0, w, n);

    /* raw pwrite64 at odd offsets, then raw read at the file position */
    show("raw pwrite 0", syscall(SYS_pwrite64, fd, w, 100001, 0L));
    show("raw pwrite 100001", syscall(SYS_pwrite64, fd, w + 100001, n - 100001, 100001L));
    show("lseek 4097", lseek(fd, 4097, SEEK_SET));
    show("raw read 77777", syscall(SYS_read, fd, r, 77777L));
    printf("match %d\n", memcmp(r, w + 4097, 77777) == 0);
    show("pos", lseek(fd, 0, SEEK_CUR));
    show("raw pread 1000@3000001", syscall(SYS_pread64, fd, r, 1000L, 3000001L));
    printf("match %d\n", memcmp(r, w + 3000001, 1000) == 0);

    /* raw copy_file_range into a second matched file */
    int out = open(copy, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (out < 0) die("open %s", copy);
    loff_t oi = 12345, oo = 0;
    long done = 0, c;
    while ((c = syscall(SYS_copy_file_range, fd, &oi, out, &oo, 1000003L, 0)) > 0) done += c;
    show("raw copy_file_range total", done);
    show("raw copy_file_range last", c);

    /* Linux AIO, as libaio issues it: writes then reads, misaligned */
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, 8, &ctx) < 0) die("io_setup");
    struct iocb cbs[4], *ptrs[4];
    memset(cbs, 0, sizeof cbs);
    for (int i = 0; i < 4; i++) {
        cbs[i].aio_fildes = fd;
        cbs[i].aio_lio_opcode = IOCB_CMD_PWRITE;
        cbs[i].aio_buf = (uint64_t)(uintptr_t)(w + 1000 * i + 1);
        cbs[i].aio_nbytes = 65537 + i;
        cbs[i].aio_offset = 5000001 + 70000 * i;
        cbs[i].aio_data = i;
        ptrs[i] = &cbs[i];
    }
    show("io_submit writes", syscall(SYS_io_submit, ctx, 4L, ptrs));
    struct io_event ev[4];
    long got = 0;
    while (got < 4) {
        long k = syscall(SYS_io_getevents, ctx, 1L, 4L, ev + got, NULL);
        if (k < 0) die("io_getevents");
        got += k;
    }
    long sum = 0;
    for (int i = 0; i < 4; i++) sum += ev[i].res;
    printf("aio write bytes %ld\n", sum);
    for (int i = 0; i < 4; i++) {
        cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
        cbs[i].aio_buf = (uint64_t)(uintptr_t)(r + 100000 * i + 3);
    }
    show("io_submit reads", syscall(SYS_io_submit, ctx, 4L, ptrs));
    got = 0;
    while (got < 4) {
        long k = syscall(SYS_io_getevents, ctx, 1L, 4L, ev + got, NULL);
        if (k < 0) die("io_getevents");
        got += k;
    }
    int ok = 1;
    for (int i = 0; i < 4; i++) ok &= memcmp(r + 100000 * i + 3, w + 1000 * i + 1, 65537 + i) == 0;
    printf("aio read match %d\n", ok);
    syscall(SYS_io_destroy, ctx);

    long long sz;
    printf("file fnv=%016llx\n", (unsigned long long)file_hash(path, &sz));
    printf("file size=%lld\n", sz);
    printf("copy fnv=%016llx\n", (unsigned long long)file_hash(copy, &sz));
    printf("copy size=%lld\n", sz);
    close(out);
    close(fd);
    return 0;
}
