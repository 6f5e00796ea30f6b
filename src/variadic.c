/* execl, execlp and execle: variadic, which stable Rust cannot define. Collect the
 * arguments as glibc does and call execve/execvp, which resolve to the shim's hooks.
 * dprintf and vdprintf write to their fd inside glibc, where no hook sees it: on a direct
 * fd that write would fail with EINVAL, so they format here and call write(), which
 * resolves to the shim's hook.
 * Exported through naked trampolines in process.rs (rustc exports only Rust items). */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wnonnull-compare"
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_ARGS 4096

static int count_args(const char *arg, va_list ap) {
    int n = 1;
    if (arg == NULL) return 1;
    while (va_arg(ap, const char *) != NULL) {
        n++;
        if (n >= MAX_ARGS) return -1;
    }
    return n + 1;
}

#define COLLECT(arg, argv, n)                               \
    do {                                                    \
        va_list ap2;                                        \
        va_start(ap2, arg);                                 \
        argv[0] = (char *)arg;                              \
        for (int i = 1; i < n; i++)                         \
            argv[i] = (arg == NULL) ? NULL : va_arg(ap2, char *); \
        argv[n - 1] = NULL;                                 \
        va_end(ap2);                                        \
    } while (0)

__attribute__((visibility("hidden"))) int s3dlio_execl(const char *path, const char *arg, ...) {
    va_list ap;
    va_start(ap, arg);
    int n = count_args(arg, ap);
    va_end(ap);
    if (n < 0) { errno = E2BIG; return -1; }
    char *argv[n];
    COLLECT(arg, argv, n);
    return execve(path, argv, environ);
}

__attribute__((visibility("hidden"))) int s3dlio_execlp(const char *file, const char *arg, ...) {
    va_list ap;
    va_start(ap, arg);
    int n = count_args(arg, ap);
    va_end(ap);
    if (n < 0) { errno = E2BIG; return -1; }
    char *argv[n];
    COLLECT(arg, argv, n);
    return execvp(file, argv);
}

__attribute__((visibility("hidden"))) int s3dlio_execle(const char *path, const char *arg, ...) {
    va_list ap;
    va_start(ap, arg);
    int n = count_args(arg, ap);
    va_end(ap);
    if (n < 0) { errno = E2BIG; return -1; }
    char *argv[n];
    char *const *envp;
    va_start(ap, arg);
    argv[0] = (char *)arg;
    for (int i = 1; i < n; i++)
        argv[i] = (arg == NULL) ? NULL : va_arg(ap, char *);
    argv[n - 1] = NULL;
    envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, argv, envp);
}

__attribute__((visibility("hidden"))) int s3dlio_vdprintf(int fd, const char *fmt, va_list ap) {
    char *buf = NULL;
    int n = vasprintf(&buf, fmt, ap);
    if (n < 0) return -1;
    size_t done = 0;
    while (done < (size_t)n) {
        ssize_t w = write(fd, buf + done, (size_t)n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            errno = e;
            return -1;
        }
        done += (size_t)w;
    }
    free(buf);
    return n;
}

__attribute__((visibility("hidden"))) int s3dlio_dprintf(int fd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = s3dlio_vdprintf(fd, fmt, ap);
    va_end(ap);
    return n;
}
