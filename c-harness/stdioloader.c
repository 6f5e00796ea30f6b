/* stdioloader [-m copy|npy] [-r RCHUNKS] [-w WCHUNKS] [-v MODE,SIZE] IN OUT
 *
 * A legacy loader that uses stdio only, with odd chunk sizes (comma-separated lists used in
 * turn; default -r 1,4095,4097,65537,1000003 and -w 4097,1,65536,333333).
 *
 *  -m copy (default)  fopen(IN,"rb") / fopen(OUT,"wb"), fread -> fwrite until EOF, fclose;
 *                     then fopen(OUT,"rb") and re-read it with fread in the read chunks,
 *                     fseek/ftell to odd places and fgetc there.
 *  -m npy             what numpy's tofile/fromfile do on a file object: the program writes
 *                     a 128-byte header with write(2) on its own descriptor, then
 *                     fdopen(dup(fd),"wb"), fseeko to the descriptor's offset, fwrite the
 *                     payload, ftello, fclose, lseek the descriptor to that position and
 *                     write(2) a 77-byte trailer; reading back the same way with
 *                     fdopen(dup(fd),"rb"), fread of the payload (starting at the unaligned
 *                     offset 128), and read(2) of the trailer on the original descriptor.
 *  -v MODE,SIZE       setvbuf(stream, NULL, MODE(F|L|N), SIZE) on each stream after opening
 *
 * stdout: "copy bytes=<n> fnv=<hash>", "reread bytes=<n> fnv=<hash> calls=<n>" and the probe
 * lines (copy), or "npy header=.. payload=.. trailer=.. fnv=.." lines (npy); all sizes and
 * hashes, no descriptor numbers. stderr: "FDINFO <label> fd=<n> flags:\t<octal>" for
 * fileno() of every stream while it is open, and in npy mode for the program's own
 * descriptor after the stream on its dup was closed ("fd-after-fclose"). Exit 0 when every
 * step worked and the data read back is what was written, 1 otherwise.
 */
#include "common.h"

static size_t rch[64], wch[64];
static int nr, nw;
static int vmode = -1;
static size_t vsize;

static int parse_list(const char *s, size_t *out)
{
    int n = 0;
    while (*s && n < 64) {
        char *e;
        unsigned long long v = strtoull(s, &e, 10);
        if (e == s) break;
        if (v) out[n++] = (size_t)v;
        s = *e == ',' ? e + 1 : e;
    }
    return n;
}

static void maybe_setvbuf(FILE *f)
{
    if (vmode < 0) return;
    int r = setvbuf(f, NULL, vmode, vsize);
    printf("setvbuf = %d\n", r);
}

static int copy_mode(const char *in, const char *out)
{
    FILE *fi = fopen(in, "rb");
    if (!fi) die("fopen %s", in);
    maybe_setvbuf(fi);
    FILE *fo = fopen(out, "wb");
    if (!fo) die("fopen %s", out);
    maybe_setvbuf(fo);
    print_fdinfo("in", fileno(fi));
    print_fdinfo("out", fileno(fo));
    char *buf = xalloc(1 << 21, 3);
    uint64_t h = FNV_INIT;
    long long tot = 0;
    int bad = 0;
    size_t pend = 0; /* bytes read but not yet written */
    for (int i = 0, j = 0;; i++) {
        size_t want = rch[i % nr];
        if (want > (1u << 20)) want = 1u << 20;
        size_t got = fread(buf + pend, 1, want, fi);
        h = fnv1a(h, buf + pend, got);
        tot += (long long)got;
        pend += got;
        /* write in the write chunks whatever is whole */
        size_t done = 0;
        while (pend - done >= wch[j % nw] || (got < want && done < pend)) {
            size_t n = wch[j % nw];
            if (n > pend - done) n = pend - done;
            if (fwrite(buf + done, 1, n, fo) != n) { printf("fwrite failed %s\n", errname(errno)); bad = 1; break; }
            done += n;
            j++;
        }
        memmove(buf, buf + done, pend - done);
        pend -= done;
        /* bytes that could not be written would pile up past the buffer's end */
        if (bad) break;
        if (got < want) {
            if (ferror(fi)) { printf("fread error %s\n", errname(errno)); bad = 1; }
            break;
        }
    }
    if (fclose(fi)) { printf("fclose in %s\n", errname(errno)); bad = 1; }
    if (fclose(fo)) { printf("fclose out %s\n", errname(errno)); bad = 1; }
    printf("copy bytes=%lld fnv=%016llx\n", tot, (unsigned long long)h);

    FILE *fb = fopen(out, "rb");
    if (!fb) die("fopen %s", out);
    maybe_setvbuf(fb);
    print_fdinfo("reread", fileno(fb));
    uint64_t h2 = FNV_INIT;
    long long tot2 = 0, calls = 0;
    for (int i = 0;; i++) {
        size_t want = rch[(i + 1) % nr];
        if (want > (1u << 21)) want = 1u << 21;
        size_t got = fread(buf, 1, want, fb);
        calls++;
        h2 = fnv1a(h2, buf, got);
        tot2 += (long long)got;
        if (got < want) break;
    }
    printf("reread bytes=%lld fnv=%016llx calls=%lld eof=%d\n", tot2, (unsigned long long)h2, calls, feof(fb) ? 1 : 0);
    if (tot2 != tot || h2 != h) { printf("BAD reread differs from the copy\n"); bad = 1; }
    /* probes at odd places */
    long long probes[] = {0, 1, 4095, 4096, 4097, tot / 2 + 1, tot - 1, tot, tot + 5};
    for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
        int r = fseeko(fb, (off_t)probes[k], SEEK_SET);
        int c = fgetc(fb);
        long long t = (long long)ftello(fb);
        printf("probe %lld: fseeko=%d fgetc=%d ftello=%lld\n", probes[k], r, c, t);
    }
    rewind(fb);
    char line[100];
    char *l = fgets(line, sizeof line, fb);
    printf("fgets after rewind: %s len=%zu\n", l ? "ok" : "NULL", l ? strlen(line) : (size_t)0);
    if (fclose(fb)) { printf("fclose reread %s\n", errname(errno)); bad = 1; }
    return bad;
}

static int npy_mode(const char *in, const char *out)
{
    int bad = 0;
    /* the payload: IN's bytes */
    long long insz;
    file_hash(in, &insz);
    if (insz < 0) die("read %s", in);
    char *payload = xalloc((size_t)insz + 1, 5);
    int ifd = open(in, O_RDONLY);
    if (ifd < 0) die("open %s", in);
    long long have = 0;
    while (have < insz) {
        ssize_t n = read(ifd, payload + have, (size_t)(insz - have));
        if (n <= 0) die("read %s", in);
        have += n;
    }
    close(ifd);
    char header[128], trailer[77];
    memset(header, ' ', sizeof header);
    memcpy(header, "\x93NUMPY\x01\x00", 8);
    snprintf(header + 8, sizeof header - 8, "{'descr': '|u1', 'shape': (%lld,), }", insz);
    header[127] = '\n';
    for (size_t i = 0; i < sizeof trailer; i++) trailer[i] = (char)('a' + i % 26);

    /* write: header by write(2), payload through fdopen(dup(fd)), trailer by write(2) */
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open %s", out);
    print_fdinfo("fd-open-w", fd);
    if (write_all(fd, header, sizeof header)) die("write header");
    off_t pos = lseek(fd, 0, SEEK_CUR);
    FILE *f = fdopen(dup(fd), "wb");
    if (!f) die("fdopen w");
    maybe_setvbuf(f);
    print_fdinfo("stream-w", fileno(f));
    if (fseeko(f, pos, SEEK_SET)) { printf("fseeko w %s\n", errname(errno)); bad = 1; }
    long long off = 0;
    for (int j = 0; off < insz; j++) {
        size_t n = wch[j % nw];
        if ((long long)n > insz - off) n = (size_t)(insz - off);
        if (fwrite(payload + off, 1, n, f) != n) { printf("fwrite %s\n", errname(errno)); bad = 1; break; }
        off += (long long)n;
    }
    off_t end = ftello(f);
    if (fclose(f)) { printf("fclose w %s\n", errname(errno)); bad = 1; }
    print_fdinfo("fd-after-fclose-w", fd);
    if (lseek(fd, end, SEEK_SET) != end) { printf("lseek %s\n", errname(errno)); bad = 1; }
    if (write_all(fd, trailer, sizeof trailer)) { printf("write trailer %s\n", errname(errno)); bad = 1; }
    if (close(fd)) { printf("close w %s\n", errname(errno)); bad = 1; }
    printf("npy write header=%zu payload=%lld end=%lld\n", sizeof header, off, (long long)end);

    /* read back the same way */
    fd = open(out, O_RDONLY);
    if (fd < 0) die("open %s", out);
    print_fdinfo("fd-open-r", fd);
    char hb[128], tb[200];
    ssize_t hn = read(fd, hb, sizeof hb);
    pos = lseek(fd, 0, SEEK_CUR);
    f = fdopen(dup(fd), "rb");
    if (!f) die("fdopen r");
    maybe_setvbuf(f);
    print_fdinfo("stream-r", fileno(f));
    if (fseeko(f, pos, SEEK_SET)) { printf("fseeko r %s\n", errname(errno)); bad = 1; }
    char *back = xalloc((size_t)insz + 1, 1);
    long long got = 0;
    for (int i = 0; got < insz; i++) {
        size_t want = rch[i % nr];
        if ((long long)want > insz - got) want = (size_t)(insz - got);
        size_t n = fread(back + got, 1, want, f);
        got += (long long)n;
        if (n < want) break;
    }
    end = ftello(f);
    if (fclose(f)) { printf("fclose r %s\n", errname(errno)); bad = 1; }
    print_fdinfo("fd-after-fclose-r", fd);
    if (lseek(fd, end, SEEK_SET) != end) { printf("lseek r %s\n", errname(errno)); bad = 1; }
    ssize_t tn = read(fd, tb, sizeof tb);
    close(fd);
    int hok = hn == (ssize_t)sizeof header && !memcmp(hb, header, sizeof header);
    int pok = got == insz && !memcmp(back, payload, (size_t)insz);
    int tok = tn == (ssize_t)sizeof trailer && !memcmp(tb, trailer, sizeof trailer);
    printf("npy read header=%zd ok=%d payload=%lld ok=%d end=%lld trailer=%zd ok=%d fnv=%016llx\n", hn, hok, got,
           pok, (long long)end, tn, tok, (unsigned long long)fnv1a(FNV_INIT, back, (size_t)got));
    if (!hok || !pok || !tok) bad = 1;
    return bad;
}

int main(int argc, char **argv)
{
    const char *mode = "copy";
    nr = parse_list("1,4095,4097,65537,1000003", rch);
    nw = parse_list("4097,1,65536,333333", wch);
    int c;
    while ((c = getopt(argc, argv, "m:r:w:v:")) != -1) {
        switch (c) {
        case 'm': mode = optarg; break;
        case 'r': nr = parse_list(optarg, rch); break;
        case 'w': nw = parse_list(optarg, wch); break;
        case 'v':
            vmode = optarg[0] == 'L' ? _IOLBF : optarg[0] == 'N' ? _IONBF : _IOFBF;
            vsize = strchr(optarg, ',') ? strtoull(strchr(optarg, ',') + 1, NULL, 10) : 0;
            break;
        default: fprintf(stderr, "usage: stdioloader [-m copy|npy] [-r LIST] [-w LIST] [-v F|L|N,SIZE] IN OUT\n"); return 2;
        }
    }
    if (optind + 2 > argc || !nr || !nw) {
        fprintf(stderr, "usage: stdioloader [-m copy|npy] [-r LIST] [-w LIST] [-v F|L|N,SIZE] IN OUT\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int bad = !strcmp(mode, "npy") ? npy_mode(argv[optind], argv[optind + 1]) : copy_mode(argv[optind], argv[optind + 1]);
    printf("%s\n", bad ? "BAD" : "OK");
    return bad;
}
