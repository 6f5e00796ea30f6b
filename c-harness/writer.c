/* writer [options] PATH
 *
 * Writes generated data (the deterministic stream gen_byte(seed, offset), see common.h)
 * in odd chunk sizes, like a legacy writer, and prints on stdout
 *   "wrote=<bytes> fnv=<FNV-1a 64 of the data written> size=<fstat size at the end>"
 * Options:
 *   -s SIZE    total bytes (default 3145733)
 *   -c LIST    chunk sizes, comma separated, cycled (default 1000,4097,1048579,4096,65536,1,8191)
 *   -m MODE    write (default) | pwrite | writev (three misaligned pieces per chunk)
 *   -o OFF     starting offset (lseek for write/writev, first offset for pwrite)
 *   -S SEED    data stream seed (default 1)
 *   -a         O_APPEND          -x  O_EXCL          -n  no O_TRUNC
 *   -r         O_RDWR instead of O_WRONLY             -D  O_DIRECT (program's own)
 *   -M MODE    creation mode, octal (default 0644)
 *   -f         fsync at the end  -t  fdatasync at the end
 *   -i FD      do not open: write to the inherited descriptor FD (PATH is a label)
 *   -F         print the kernel's flags line on stderr ("FDINFO <path> fd=<n> flags:\t<octal>")
 *   -G         print F_GETFL on stdout ("getfl=0<octal>")
 *   -w         after the first chunk print "READY <pid>" on stderr and wait for a byte on stdin
 *   -y N       fsync after every chunk that reaches a multiple of N bytes written, then print
 *              "SYNCED <bytes>" on stdout (flushed): everything below <bytes> is durable
 *   -Y N       the same with fdatasync
 *   -O sync|dsync  open with O_SYNC or O_DSYNC: "SYNCED <bytes>" after every chunk
 *   -p N       after the chunk that reaches N bytes written print "PAUSED <bytes>" on stdout
 *              (flushed) and wait for a byte on stdin (end of input: go on)
 * Exit status 1 and "error <call> <errno> at=<bytes>" on the first failing call; a short
 * write is reported as "short <call> <got>/<want> at=<bytes>" and continued.
 */
#include "common.h"
#include <sys/uio.h>

int main(int argc, char **argv)
{
    long long total = 3145733, start = 0;
    const char *chunks = "1000,4097,1048579,4096,65536,1,8191";
    const char *mode = "write";
    uint64_t seed = 1;
    int flags = O_WRONLY | O_CREAT | O_TRUNC, fsync_end = 0, fdatasync_end = 0, inherit = -1, show = 0, getfl = 0, waitin = 0;
    long long sync_every = 0, pause_at = -1;
    int sync_data = 0, sync_open = 0;
    mode_t cmode = 0644;
    int c;
    while ((c = getopt(argc, argv, "s:c:m:o:S:axnrDM:fti:FGwy:Y:O:p:")) != -1) {
        switch (c) {
        case 's': total = strtoll(optarg, NULL, 0); break;
        case 'c': chunks = optarg; break;
        case 'm': mode = optarg; break;
        case 'o': start = strtoll(optarg, NULL, 0); break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'a': flags |= O_APPEND; break;
        case 'x': flags |= O_EXCL; break;
        case 'n': flags &= ~O_TRUNC; break;
        case 'r': flags = (flags & ~O_ACCMODE) | O_RDWR; break;
        case 'D': flags |= O_DIRECT; break;
        case 'M': cmode = (mode_t)strtol(optarg, NULL, 8); break;
        case 'f': fsync_end = 1; break;
        case 't': fdatasync_end = 1; break;
        case 'i': inherit = atoi(optarg); break;
        case 'F': show = 1; break;
        case 'G': getfl = 1; break;
        case 'w': waitin = 1; break;
        case 'y': sync_every = strtoll(optarg, NULL, 0); sync_data = 0; break;
        case 'Y': sync_every = strtoll(optarg, NULL, 0); sync_data = 1; break;
        case 'p': pause_at = strtoll(optarg, NULL, 0); break;
        case 'O':
            if (!strcmp(optarg, "sync")) flags |= O_SYNC;
            else if (!strcmp(optarg, "dsync")) flags |= O_DSYNC;
            else { fprintf(stderr, "writer: -O sync|dsync\n"); return 2; }
            sync_open = 1;
            break;
        default: fprintf(stderr, "usage: writer [-s SIZE] [-c LIST] [-m write|pwrite|writev] [-o OFF] [-S SEED] [-a] [-x] [-n] [-r] [-D] [-M MODE] [-f] [-t] [-i FD] [-F] [-G] [-w] [-y N|-Y N] [-O sync|dsync] [-p N] PATH\n"); return 2;
        }
    }
    if (optind >= argc) { fprintf(stderr, "writer: no PATH\n"); return 2; }
    const char *path = argv[optind];
    long long sizes[64];
    int nsz = 0;
    for (const char *p = chunks; *p && nsz < 64;) {
        sizes[nsz++] = strtoll(p, (char **)&p, 0);
        if (*p == ',') p++;
    }
    if (!nsz) sizes[nsz++] = 4096;
    int fd = inherit >= 0 ? inherit : open(path, flags, cmode);
    if (fd < 0) { printf("error open %s at=0\n", errname(errno)); return 1; }
    if (show) print_fdinfo(path, fd);
    if (getfl) printf("getfl=0%o\n", fcntl(fd, F_GETFL));
    if (start && strcmp(mode, "pwrite") && lseek(fd, start, SEEK_SET) < 0) { printf("error lseek %s at=0\n", errname(errno)); return 1; }
    long long maxc = 0;
    for (int i = 0; i < nsz; i++) if (sizes[i] > maxc) maxc = sizes[i];
    char *buf = (char *)malloc((size_t)maxc + 64) + 3; /* misaligned on purpose */
    uint64_t h = FNV_INIT;
    long long done = 0;
    int k = 0, rc = 0;
    while (done < total) {
        long long want = sizes[k++ % nsz];
        if (want > total - done) want = total - done;
        gen_fill(seed, (uint64_t)done, buf, (size_t)want);
        h = fnv1a(h, buf, (size_t)want);
        long long put = 0;
        while (put < want) {
            ssize_t w;
            errno = 0;
            if (!strcmp(mode, "pwrite")) {
                w = pwrite(fd, buf + put, (size_t)(want - put), start + done + put);
            } else if (!strcmp(mode, "writev")) {
                size_t rest = (size_t)(want - put), a = rest / 3, b = rest / 3 + 1;
                if (a + b > rest) b = rest - a;
                struct iovec iov[3] = {{buf + put, a}, {buf + put + a, b}, {buf + put + a + b, rest - a - b}};
                w = writev(fd, iov, 3);
            } else {
                w = write(fd, buf + put, (size_t)(want - put));
            }
            if (w < 0) { printf("error %s %s at=%lld\n", mode, errname(errno), done + put); fflush(stdout); return 1; }
            if (w < want - put) printf("short %s %lld/%lld at=%lld\n", mode, (long long)w, want - put, done + put);
            if (w == 0) { rc = 1; break; }
            put += w;
        }
        long long before = done;
        done += put;
        if (sync_every > 0 && done / sync_every != before / sync_every) {
            if ((sync_data ? fdatasync(fd) : fsync(fd)) < 0) {
                printf("error %s %s at=%lld\n", sync_data ? "fdatasync" : "fsync", errname(errno), done);
                fflush(stdout);
                return 1;
            }
            printf("SYNCED %lld\n", done);
            fflush(stdout);
        } else if (sync_open) {
            printf("SYNCED %lld\n", done);
            fflush(stdout);
        }
        if (pause_at >= 0 && done >= pause_at && before < pause_at) {
            printf("PAUSED %lld\n", done);
            fflush(stdout);
            char ch;
            if (read(0, &ch, 1) < 0) { /* go on */ }
        }
        if (waitin && done == put) {
            fprintf(stderr, "READY %d\n", (int)getpid());
            fflush(stderr);
            char ch;
            if (read(0, &ch, 1) < 0) { /* ignore */ }
        }
        if (rc) break;
    }
    if (fsync_end && fsync(fd) < 0) { printf("error fsync %s\n", errname(errno)); rc = 1; }
    if (fdatasync_end && fdatasync(fd) < 0) { printf("error fdatasync %s\n", errname(errno)); rc = 1; }
    struct stat st;
    fstat(fd, &st);
    if (show) print_fdinfo(path, fd);
    printf("wrote=%lld fnv=%016llx size=%lld\n", done, (unsigned long long)h, (long long)st.st_size);
    if (inherit < 0 && close(fd) < 0) { printf("error close %s\n", errname(errno)); rc = 1; }
    return rc;
}
