/* streamseq SEED PATH [N] [fork]
 *
 * Differential workload for stdio streams: a seeded (own PRNG) random sequence of N
 * (default 250) stream operations on two files, PATH (stream slot A) and PATH.2 (slot B),
 * at most one stream per file at a time (two streams on one file, or a stream and a raw
 * descriptor on one file without fflush, is undefined in C):
 *   opening   fopen, fopen64, fdopen(open()) with every mode r w a r+ w+ a+, with and
 *             without b, e and (for w, w+) x, in varied spellings ("r+b", "rb+", "w+bex");
 *             fdopen with a mode the descriptor does not allow (EINVAL); freopen/freopen64
 *             of an open stream (same FILE* expected); unlink of a closed file (so that x,
 *             r and fdopen meet a missing file)
 *   setvbuf   right after an open: _IOFBF, _IOLBF, _IONBF, with NULL or a user buffer of
 *             odd size (1, 17, 511, 4097, 10007, 65537 bytes)
 *   reading   fread (element sizes 1 3 7 512 4096 4097), fgets (n 1 2 17 100 4097 70000),
 *             fgetc, getc, ungetc (one character, right after a read that returned data)
 *   writing   fwrite, fputs, fprintf, fputc, putc
 *   position  fseek, fseeko (SET, CUR, END, beyond EOF, negative), ftell, ftello, rewind
 *   state     fflush, feof, ferror, clearerr, fileno+fstat (after fflush), fclose
 * Reads on a write-only stream and writes on a read-only stream happen too (EBADF and the
 * error flag), after an fflush (what glibc does with data still buffered then is accidental). On update streams a write is preceded by fseek(f,0,SEEK_CUR) after a read,
 * and a read by fflush after a write, as C requires.
 *
 * Every call is one stdout line: "<step> <call> = <ret> [<errno>] [h=<fnv of bytes read>]
 * [eof=<feof> err=<ferror>]". errno is printed only where the call reports a failure (or
 * newly set the error indicator). Buffers are misaligned by 0..63 bytes, sizes odd.
 * After each successful open, "FDINFO <call>(<mode>) fd=<fileno> flags:\t<octal>" goes to
 * stderr (print_fdinfo): the kernel's view of fileno(f). Streams are printed as slots A/B,
 * never as descriptor numbers. The last lines are "final A size=<n> fnv=<hash>" and the
 * same for B.
 *
 * With "fork", at step N/2 every stream is flushed (fflush(NULL), as POSIX requires before
 * handing a stream's description to another process) and the process forks: the child
 * prints "FDINFO child-<slot>-<how it was opened>(<mode>)" lines for its inherited streams, continues the sequence on
 * the inherited streams, closes them and ends with exit(0) (even SEED) or _exit(0) (odd
 * SEED); the parent waits, prints "parent: child status=<n>", closes its copies of the
 * streams (nothing buffered) and prints the final lines.
 * The stdout of a plain run and of a run through the shim must be identical.
 */
#include "common.h"
#include <sys/wait.h>

#define MAXB (200 * 1024)

typedef struct {
    FILE *f;
    char path[4200];
    char mode[16];
    char how[16];      /* fopen, fopen64, fdopen, freopen, freopen64 */
    int can_read, can_write, update;
    int last;          /* 0 none, 1 read, 2 write */
    long long hint;    /* a size known to the program (the kernel's size depends on buffering) */
    int unget_ok;      /* the previous operation on this stream read at least one byte */
    char *ubuf;        /* setvbuf user buffer, freed after fclose */
} slot_t;

static slot_t S[2];
static rng_t R;
static uint64_t data_seed;
static unsigned long long stream_off;
static char *rbuf_base, *wbuf_base;
static int step;
static int prev_unget_ok;

static const char *slotname(int s) { return s ? "B" : "A"; }

static void endl(void) { putchar('\n'); }
static void out_err(int e) { printf(" %s", errname(e)); }
static void out_state(slot_t *s) { printf(" eof=%d err=%d", feof(s->f) ? 1 : 0, ferror(s->f) ? 1 : 0); }

static long long file_size(const char *p)
{
    struct stat st;
    if (stat(p, &st) < 0) return -1;
    return st.st_size;
}

static size_t pick_size(void)
{
    switch (rng_below(&R, 12)) {
    case 0: return 1;
    case 1: return 1 + rng_below(&R, 16);
    case 2: return 511;
    case 3: return 4095;
    case 4: return 4096;
    case 5: return 4097;
    case 6: return 8191 + rng_below(&R, 3);
    case 7: return 65537;
    case 8: return 4096 * (1 + rng_below(&R, 20));
    default: return (1 + rng_below(&R, MAXB - 1)) | 1;
    }
}
static char *rbuf(void) { return rbuf_base + rng_below(&R, 64); }
static char *wbuf(size_t n)
{
    char *b = wbuf_base + rng_below(&R, 64);
    gen_fill(data_seed, stream_off, b, n);
    stream_off += n;
    return b;
}

static void make_mode(char *out, int *base_idx)
{
    static const char *bases[] = {"r", "w", "a", "r+", "w+", "a+"};
    int bi = (int)rng_below(&R, 6);
    *base_idx = bi;
    const char *b = bases[bi];
    int bin = rng_pct(&R, 50), e = rng_pct(&R, 20), x = (bi == 1 || bi == 4) && rng_pct(&R, 20);
    char *o = out;
    *o++ = b[0];
    if (b[1] == '+' && bin && rng_pct(&R, 50)) { *o++ = 'b'; *o++ = '+'; }
    else {
        if (b[1] == '+') *o++ = '+';
        if (bin) *o++ = 'b';
    }
    if (e) *o++ = 'e';
    if (x) *o++ = 'x';
    *o = 0;
}

static int open_flags(int bi, const char *mode)
{
    static const int fl[] = {O_RDONLY, O_WRONLY | O_CREAT | O_TRUNC, O_WRONLY | O_CREAT | O_APPEND,
                             O_RDWR, O_RDWR | O_CREAT | O_TRUNC, O_RDWR | O_CREAT | O_APPEND};
    int f = fl[bi];
    if (strchr(mode, 'e')) f |= O_CLOEXEC;
    if (strchr(mode, 'x')) f |= O_EXCL;
    return f;
}

static void set_perms(slot_t *s, int bi)
{
    s->update = bi >= 3;
    s->can_read = bi == 0 || s->update;
    s->can_write = bi != 0;
    s->last = 0;
    s->unget_ok = 0;
}

static void do_setvbuf(int si)
{
    slot_t *s = &S[si];
    static const size_t sizes[] = {1, 17, 511, 4097, 10007, 65537};
    static const int types[] = {_IOFBF, _IOLBF, _IONBF};
    static const char *tn[] = {"FBF", "LBF", "NBF"};
    int t = (int)rng_below(&R, 3);
    size_t sz = sizes[rng_below(&R, 6)];
    int user = rng_pct(&R, 60);
    if (user) s->ubuf = malloc(sz);
    errno = 0;
    int r = setvbuf(s->f, user ? s->ubuf : NULL, types[t], sz);
    printf("%d setvbuf(%s,%s,%s,%zu) = %d", step, slotname(si), user ? "user" : "NULL", tn[t], sz, r);
    if (r) out_err(errno);
    endl();
}

static void after_open(int si, const char *call, int bi)
{
    slot_t *s = &S[si];
    char label[64];
    snprintf(label, sizeof label, "%s(%s)", call, s->mode);
    print_fdinfo(label, fileno(s->f));
    snprintf(s->how, sizeof s->how, "%s", call);
    s->hint = file_size(s->path); /* nothing of this file is buffered anywhere yet */
    set_perms(s, bi);
    if (rng_pct(&R, 40)) do_setvbuf(si);
}

static void op_open(int si)
{
    slot_t *s = &S[si];
    int bi;
    make_mode(s->mode, &bi);
    int how = (int)rng_below(&R, 20);
    errno = 0;
    if (how < 8) {
        s->f = fopen(s->path, s->mode);
        printf("%d fopen(%s,\"%s\") = %s", step, slotname(si), s->mode, s->f ? "ok" : "NULL");
        if (!s->f) out_err(errno);
        endl();
        if (s->f) after_open(si, "fopen", bi);
    } else if (how < 14) {
        s->f = fopen64(s->path, s->mode);
        printf("%d fopen64(%s,\"%s\") = %s", step, slotname(si), s->mode, s->f ? "ok" : "NULL");
        if (!s->f) out_err(errno);
        endl();
        if (s->f) after_open(si, "fopen64", bi);
    } else {
        int mismatch = how == 19;
        int flags = open_flags(bi, s->mode);
        if (mismatch) flags = (bi == 0) ? O_WRONLY | O_CREAT : O_RDONLY; /* fdopen must refuse */
        int fd = open(s->path, flags, 0644);
        printf("%d open+fdopen(%s,\"%s\"%s)", step, slotname(si), s->mode, mismatch ? ",mismatch" : "");
        if (fd < 0) {
            printf(" open = -1");
            out_err(errno);
            endl();
            return;
        }
        errno = 0;
        s->f = fdopen(fd, s->mode);
        printf(" = %s", s->f ? "ok" : "NULL");
        if (!s->f) {
            out_err(errno);
            printf(" close = %d", close(fd));
        }
        endl();
        if (s->f) after_open(si, "fdopen", bi);
    }
}

static void op_freopen(int si)
{
    slot_t *s = &S[si];
    int bi;
    char mode[16];
    make_mode(mode, &bi);
    if (strchr(mode, 'x')) { mode[strlen(mode) - 1] = 0; } /* the file may exist: keep it simple */
    int use64 = rng_pct(&R, 50);
    FILE *old = s->f;
    errno = 0;
    FILE *n = use64 ? freopen64(s->path, mode, s->f) : freopen(s->path, mode, s->f);
    printf("%d %s(%s,\"%s\") = %s", step, use64 ? "freopen64" : "freopen", slotname(si), mode,
           n == old ? "same" : n ? "other" : "NULL");
    if (!n) out_err(errno);
    endl();
    if (!n) {
        s->f = NULL; /* the old stream is closed either way */
        free(s->ubuf);
        s->ubuf = NULL;
        return;
    }
    s->f = n;
    snprintf(s->mode, sizeof s->mode, "%s", mode);
    char label[64];
    snprintf(label, sizeof label, "%s(%s)", use64 ? "freopen64" : "freopen", mode);
    print_fdinfo(label, fileno(n));
    snprintf(s->how, sizeof s->how, "%s", use64 ? "freopen64" : "freopen");
    s->hint = file_size(s->path); /* freopen flushed and closed the old stream */
    set_perms(s, bi);
    /* freopen keeps a user buffer given before? glibc resets to its own: the old one stays
     * allocated until the stream is closed */
}

/* C: input after output needs fflush/fseek, output after input needs fseek */
static void direction(int si, int want)
{
    slot_t *s = &S[si];
    if (!s->update) return;
    if (want == 1 && s->last == 2) {
        errno = 0;
        int r = fflush(s->f);
        printf("%d (w->r) fflush(%s) = %d", step, slotname(si), r);
        if (r) out_err(errno);
        endl();
    } else if (want == 2 && s->last == 1) {
        errno = 0;
        int r = fseek(s->f, 0, SEEK_CUR);
        printf("%d (r->w) fseek(%s,0,CUR) = %d", step, slotname(si), r);
        if (r) out_err(errno);
        endl();
    }
    s->last = want;
}

/* after a write: the stream's position is known to the program, the kernel's size is not */
static void note_pos(slot_t *s)
{
    int e = errno;
    long long p = (long long)ftello(s->f);
    if (p > s->hint) s->hint = p;
    errno = e;
}

static void err_if_new(slot_t *s, int had_err, int failed)
{
    if ((failed && !ferror(s->f)) || (!had_err && ferror(s->f))) out_err(errno);
    else if (failed && had_err) printf(" (err already set)");
}

static void op_fread(int si)
{
    slot_t *s = &S[si];
    static const size_t esz[] = {1, 3, 7, 512, 4096, 4097};
    size_t sz = esz[rng_below(&R, 6)];
    size_t maxn = MAXB / sz;
    size_t n = sz == 1 ? pick_size() : 1 + rng_below(&R, maxn < 40 ? maxn : 40);
    if (n * sz > MAXB) n = MAXB / sz;
    direction(si, 1);
    char *b = rbuf();
    int had = ferror(s->f) != 0;
    errno = 0;
    size_t r = fread(b, sz, n, s->f);
    printf("%d fread(%s,%zu,%zu) = %zu", step, slotname(si), sz, n, r);
    err_if_new(s, had, 0);
    if (r) printf(" h=%016llx", (unsigned long long)fnv1a(FNV_INIT, b, r * sz));
    s->unget_ok = r > 0 && !feof(s->f) && !ferror(s->f);
    out_state(s);
    endl();
}

static void op_fwrite(int si)
{
    slot_t *s = &S[si];
    static const size_t esz[] = {1, 1, 3, 512, 4096, 4097};
    size_t sz = esz[rng_below(&R, 6)];
    size_t n = sz == 1 ? pick_size() : 1 + rng_below(&R, 30);
    if (n * sz > MAXB) n = MAXB / sz;
    direction(si, 2);
    char *b = wbuf(n * sz);
    int had = ferror(s->f) != 0;
    errno = 0;
    size_t r = fwrite(b, sz, n, s->f);
    printf("%d fwrite(%s,%zu,%zu) = %zu", step, slotname(si), sz, n, r);
    err_if_new(s, had, 0);
    out_state(s);
    endl();
    note_pos(s);
}

static void op_fgets(int si)
{
    slot_t *s = &S[si];
    static const int ns[] = {1, 2, 17, 100, 4097, 70000};
    int n = ns[rng_below(&R, 6)];
    direction(si, 1);
    char *b = rbuf();
    memset(b, 0x5a, (size_t)n);
    int had = ferror(s->f) != 0;
    errno = 0;
    char *r = fgets(b, n, s->f);
    printf("%d fgets(%s,%d) = ", step, slotname(si), n);
    if (r) {
        size_t l = strnlen(b, (size_t)n);
        printf("len %zu h=%016llx", l, (unsigned long long)fnv1a(FNV_INIT, b, l));
        s->unget_ok = l > 0 && !feof(s->f) && !ferror(s->f);
    } else {
        printf("NULL");
    }
    err_if_new(s, had, 0);
    out_state(s);
    endl();
}

static void op_getc(int si)
{
    slot_t *s = &S[si];
    int k = 1 + (int)rng_below(&R, 20), use_getc = rng_pct(&R, 50), got = 0, c = 0;
    direction(si, 1);
    int had = ferror(s->f) != 0;
    uint64_t h = FNV_INIT;
    errno = 0;
    for (int i = 0; i < k; i++) {
        c = use_getc ? getc(s->f) : fgetc(s->f);
        if (c == EOF) break;
        unsigned char uc = (unsigned char)c;
        h = fnv1a(h, &uc, 1);
        got++;
    }
    printf("%d %s(%s)x%d = %d last=%d h=%016llx", step, use_getc ? "getc" : "fgetc", slotname(si), k, got, c,
           (unsigned long long)h);
    s->unget_ok = got > 0 && c != EOF && !ferror(s->f);
    err_if_new(s, had, 0);
    out_state(s);
    endl();
}

static void op_ungetc(int si)
{
    slot_t *s = &S[si];
    /* C guarantees one character of pushback, and glibc's pushback area has accidents with
     * tiny or no buffers after EOF: push back only right after a read that returned data */
    if (!prev_unget_ok) {
        printf("%d ungetc(%s) skipped (no read just before)\n", step, slotname(si));
        return;
    }
    errno = 0;
    long p = ftell(s->f);
    if (p <= 0 || !s->can_read || (s->update && s->last == 2)) {
        printf("%d ungetc(%s) skipped (ftell=%ld)\n", step, slotname(si), p);
        return;
    }
    direction(si, 1);
    int c = (int)rng_below(&R, 256);
    errno = 0;
    int r = ungetc(c, s->f);
    printf("%d ungetc(%s,%d) = %d", step, slotname(si), c, r);
    if (r == EOF) out_err(errno);
    errno = 0;
    printf(" ftell=%ld", ftell(s->f));
    out_state(s);
    endl();
}

static void op_fputs(int si)
{
    slot_t *s = &S[si];
    size_t n = 1 + rng_below(&R, rng_pct(&R, 70) ? 200 : 20000);
    direction(si, 2);
    char *b = wbuf_base + rng_below(&R, 64);
    for (size_t i = 0; i < n; i++) {
        uint64_t v = rng_below(&R, 64);
        b[i] = v == 0 ? '\n' : (char)('!' + (v + i) % 90);
    }
    b[n] = 0;
    int had = ferror(s->f) != 0;
    errno = 0;
    int r = fputs(b, s->f);
    printf("%d fputs(%s,%zu) = %s", step, slotname(si), n, r == EOF ? "EOF" : r >= 0 ? "ok" : "?");
    err_if_new(s, had, r == EOF);
    out_state(s);
    endl();
    note_pos(s);
}

static void op_fprintf(int si)
{
    slot_t *s = &S[si];
    direction(si, 2);
    int had = ferror(s->f) != 0;
    long long a = (long long)rng_next(&R);
    double d = (double)rng_below(&R, 1000000) / 7.0;
    int w = (int)rng_below(&R, 5000);
    errno = 0;
    int r = fprintf(s->f, "step %d: %lld %x %.5f [%*s]%s", step, a, (unsigned)(a >> 7), d, w, "pad",
                    rng_pct(&R, 50) ? "\n" : "");
    printf("%d fprintf(%s) = %d", step, slotname(si), r);
    err_if_new(s, had, r < 0);
    out_state(s);
    endl();
    note_pos(s);
}

static void op_fputc(int si)
{
    slot_t *s = &S[si];
    int k = 1 + (int)rng_below(&R, 30), use_putc = rng_pct(&R, 50), ok = 0, r = 0;
    direction(si, 2);
    int had = ferror(s->f) != 0;
    errno = 0;
    for (int i = 0; i < k; i++) {
        int c = rng_pct(&R, 10) ? '\n' : (int)rng_below(&R, 256);
        r = use_putc ? putc(c, s->f) : fputc(c, s->f);
        if (r == EOF) break;
        ok++;
    }
    printf("%d %s(%s)x%d = %d", step, use_putc ? "putc" : "fputc", slotname(si), k, ok);
    err_if_new(s, had, r == EOF);
    out_state(s);
    endl();
    note_pos(s);
}

static void op_seek(int si)
{
    slot_t *s = &S[si];
    long long size = s->hint > 0 ? s->hint : 0;
    int whence, use_o = rng_pct(&R, 50);
    long long off;
    switch (rng_below(&R, 8)) {
    case 0: case 1: whence = SEEK_SET; off = (long long)rng_below(&R, (uint64_t)size + 10000); break;
    case 2: whence = SEEK_SET; off = 4096 * (long long)rng_below(&R, (uint64_t)size / 4096 + 2); break;
    case 3: whence = SEEK_CUR; off = (long long)rng_below(&R, 20000) - 10000; break;
    case 4: whence = SEEK_END; off = -(long long)rng_below(&R, 5000); break;
    case 5: whence = SEEK_END; off = (long long)rng_below(&R, 9000); break;
    case 6: whence = SEEK_SET; off = -1 - (long long)rng_below(&R, 10); break;
    default: whence = SEEK_CUR; off = 0; break;
    }
    static const char *wn[] = {"SET", "CUR", "END"};
    errno = 0;
    int r = use_o ? fseeko(s->f, (off_t)off, whence) : fseek(s->f, (long)off, whence);
    printf("%d %s(%s,%lld,%s) = %d", step, use_o ? "fseeko" : "fseek", slotname(si), off, wn[whence], r);
    if (r) out_err(errno);
    out_state(s);
    endl();
    if (r == 0) s->last = 0;
}

static void op_tell(int si)
{
    slot_t *s = &S[si];
    int use_o = rng_pct(&R, 50);
    errno = 0;
    long long r = use_o ? (long long)ftello(s->f) : (long long)ftell(s->f);
    printf("%d %s(%s) = %lld", step, use_o ? "ftello" : "ftell", slotname(si), r);
    if (r < 0) out_err(errno);
    endl();
}

static void op_misc(int si)
{
    slot_t *s = &S[si];
    errno = 0;
    switch (rng_below(&R, 6)) {
    case 0:
        rewind(s->f);
        s->last = 0;
        printf("%d rewind(%s)", step, slotname(si));
        out_state(s);
        break;
    case 1: {
        int r = fflush(s->f);
        printf("%d fflush(%s) = %d", step, slotname(si), r);
        if (r) out_err(errno);
        if (r == 0 && s->last == 2) s->last = 0;
        break;
    }
    case 2:
        printf("%d feof(%s) = %d ferror = %d", step, slotname(si), feof(s->f) ? 1 : 0, ferror(s->f) ? 1 : 0);
        break;
    case 3:
        clearerr(s->f);
        printf("%d clearerr(%s)", step, slotname(si));
        out_state(s);
        break;
    default: {
        /* the kernel's size is only defined once the stream's buffer has gone out */
        int r = fflush(s->f);
        if (r == 0 && s->last == 2) s->last = 0;
        int fd = fileno(s->f);
        struct stat st;
        int sr = fstat(fd, &st);
        printf("%d fflush+fileno+fstat(%s) = %d fileno>=0:%d", step, slotname(si), r, fd >= 0);
        if (sr == 0) printf(" reg=%d size=%lld", S_ISREG(st.st_mode) ? 1 : 0, (long long)st.st_size);
        if (sr == 0 && r == 0) s->hint = st.st_size;
        else out_err(errno);
        break;
    }
    }
    endl();
}

static void op_close(int si)
{
    slot_t *s = &S[si];
    errno = 0;
    int r = fclose(s->f);
    printf("%d fclose(%s) = %d", step, slotname(si), r);
    if (r) out_err(errno);
    printf(" size=%lld", file_size(s->path));
    endl();
    s->f = NULL;
    free(s->ubuf);
    s->ubuf = NULL;
}

static void one_step(void)
{
    int si = (int)rng_below(&R, 2);
    slot_t *s = &S[si];
    if (!s->f) {
        if (rng_pct(&R, 12)) {
            errno = 0;
            int r = unlink(s->path);
            printf("%d unlink(%s) = %d", step, slotname(si), r);
            if (r) out_err(errno);
            endl();
        } else {
            op_open(si);
        }
        return;
    }
    prev_unget_ok = s->unget_ok;
    s->unget_ok = 0;
    int wrong = rng_pct(&R, 4);
    int roll = (int)rng_below(&R, 100);
    /* mostly the direction the stream allows, sometimes the other (EBADF, error flag) */
    int reading = s->can_read && (!s->can_write || rng_pct(&R, 50));
    if (wrong) {
        /* a read on a write-only stream (or the reverse) fails with EBADF, but what glibc then
         * does with data still in the buffer is an accident of its implementation (it can lose
         * a byte of a pending 1-byte line buffer): flush first, so only the error is compared */
        reading = !reading;
        errno = 0;
        int r = fflush(s->f);
        printf("%d (wrong direction next) fflush(%s) = %d", step, slotname(si), r);
        if (r) out_err(errno);
        endl();
        if (r == 0 && s->last == 2) s->last = 0;
    }
    if (roll < 50) {
        if (reading) {
            int k = (int)rng_below(&R, 10);
            if (k < 5) op_fread(si);
            else if (k < 7) op_fgets(si);
            else if (k < 9) op_getc(si);
            else op_ungetc(si);
        } else {
            int k = (int)rng_below(&R, 10);
            if (k < 6) op_fwrite(si);
            else if (k < 8) op_fputs(si);
            else if (k < 9) op_fprintf(si);
            else op_fputc(si);
        }
    } else if (roll < 65) {
        op_seek(si);
    } else if (roll < 73) {
        op_tell(si);
    } else if (roll < 90) {
        op_misc(si);
    } else if (roll < 92) {
        op_freopen(si);
    } else {
        op_close(si);
    }
}

static void final_lines(void)
{
    for (int i = 0; i < 2; i++) {
        long long sz;
        uint64_t h = file_hash(S[i].path, &sz);
        printf("final %s size=%lld fnv=%016llx\n", slotname(i), sz, (unsigned long long)h);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: streamseq SEED PATH [N] [fork]\n");
        return 2;
    }
    uint64_t seed = strtoull(argv[1], NULL, 10);
    int n = argc > 3 ? atoi(argv[3]) : 250;
    int do_fork = argc > 4 && !strcmp(argv[4], "fork");
    R.s = fnv1a(FNV_INIT, &seed, sizeof seed);
    data_seed = seed + 1000;
    snprintf(S[0].path, sizeof S[0].path, "%s", argv[2]);
    snprintf(S[1].path, sizeof S[1].path, "%s.2", argv[2]);
    rbuf_base = xalloc(MAXB + 128, 0);
    wbuf_base = xalloc(MAXB + 128, 0);
    for (step = 0; step < n; step++) {
        if (do_fork && step == n / 2) {
            int r = fflush(NULL);
            printf("%d fork: fflush(NULL) = %d\n", step, r);
            fflush(stdout);
            pid_t c = fork();
            if (c < 0) die("fork");
            if (c == 0) {
                for (int i = 0; i < 2; i++)
                    if (S[i].f) {
                        char l[64];
                        snprintf(l, sizeof l, "child-%s-%s(%s)", slotname(i), S[i].how, S[i].mode);
                        print_fdinfo(l, fileno(S[i].f));
                        S[i].last = 0; /* fflush(NULL) settled both directions */
                    }
                printf("%d child continues\n", step);
                for (; step < n; step++) one_step();
                for (int i = 0; i < 2; i++)
                    if (S[i].f) op_close(i);
                printf("child done\n");
                fflush(stdout);
                if (seed % 2) _exit(0);
                exit(0);
            }
            int st = 0;
            waitpid(c, &st, 0);
            printf("parent: child status=%d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            for (int i = 0; i < 2; i++)
                if (S[i].f) {
                    int r2 = fclose(S[i].f);
                    printf("parent fclose(%s) = %d\n", slotname(i), r2);
                    S[i].f = NULL;
                }
            final_lines();
            return 0;
        }
        one_step();
    }
    for (int i = 0; i < 2; i++)
        if (S[i].f) op_close(i);
    final_lines();
    return 0;
}
