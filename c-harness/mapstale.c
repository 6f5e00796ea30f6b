/* A mapping of a matched file taken away behind the library's hooks (raw munmap system
 * call) and its addresses reused for anonymous memory (raw mmap): the library's registry
 * still lists the range, and whatever it does to give the file's pages back must leave the
 * program's new memory alone.
 *   mapstale FILE SECONDS  -> prints "intact" or the first damaged offset */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: mapstale FILE SECONDS\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror("open");
        return 1;
    }
    size_t n = (size_t)st.st_size & ~(size_t)4095;
    unsigned char *p = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    volatile unsigned sum = 0;
    for (size_t i = 0; i < n; i += 4096)
        sum += p[i];
    /* behind the hooks: the file's mapping goes, anonymous memory takes its place */
    if (syscall(SYS_munmap, p, n) != 0) {
        perror("munmap");
        return 1;
    }
    unsigned char *q = (unsigned char *)syscall(SYS_mmap, p, n, PROT_READ | PROT_WRITE,
                                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (q != p) {
        perror("mmap anonymous");
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        q[i] = (unsigned char)(i * 7 + 1);
    /* the file's pages are still cached, over any small budget: give the library's
     * reclaimer time to give them back */
    sleep((unsigned)atoi(argv[2]));
    for (size_t i = 0; i < n; i++)
        if (q[i] != (unsigned char)(i * 7 + 1)) {
            printf("damaged at %zu\n", i);
            return 3;
        }
    printf("intact\n");
    return 0;
}
