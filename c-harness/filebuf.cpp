// filebuf IN OUT [RCHUNKS WCHUNKS]
//
// libstdc++ std::basic_filebuf: opens with fopen (inside glibc) and then calls read(2) and
// write(2) on fileno() through the dynamic linker. Copies IN to OUT with
// std::ifstream::read(1000-byte chunks) and std::ofstream::write(4097-byte chunks), then
// re-reads OUT with seekg/read and prints "copied=<n> fnv=<hash> reread=<n> fnv=<hash>".
//
// With RCHUNKS and WCHUNKS (comma-separated lists of chunk sizes, used in turn, e.g.
// "1,4095,65537"), the copy reads and writes with those odd sizes instead, and then an
// std::fstream (in|out) on OUT overwrites odd ranges with seekp/write, reads odd ranges back
// with seekg/read, appends past the end, and prints one line per step
// ("patch off=<o> len=<n> ok=<0|1>", "read off=<o> len=<n> got=<n> fnv=<hash>") before the
// same summary line, computed over the patched file.
//
// With HARNESS_FDINFO set, the kernel's flags of the descriptor each stream holds (found
// through /proc/self/fd, since a filebuf does not expose it) go to stderr while it is open:
// "FDINFO <in|out|rw|back> fd=<n> flags:\t<octal>".
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <iostream>
#include <string>
#include <unistd.h>
#include <vector>

static uint64_t fnv(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= static_cast<unsigned char>(p[i]);
        h *= 0x100000001b3ULL;
    }
    return h;
}

// "flags:" line of every descriptor of this process that refers to path.
static void fdinfo_of_path(const char *label, const char *path)
{
    if (!std::getenv("HARNESS_FDINFO")) return;
    char want[PATH_MAX];
    if (!realpath(path, want)) return;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return;
    while (struct dirent *e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        char lp[512], target[PATH_MAX];
        std::snprintf(lp, sizeof lp, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(lp, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = 0;
        if (std::strcmp(target, want) != 0) continue;
        char ip[512], buf[4096];
        std::snprintf(ip, sizeof ip, "/proc/self/fdinfo/%s", e->d_name);
        int f = open(ip, O_RDONLY | O_CLOEXEC);
        if (f < 0) continue;
        ssize_t m = read(f, buf, sizeof buf - 1);
        close(f);
        if (m <= 0) continue;
        buf[m] = 0;
        char *p = std::strstr(buf, "flags:");
        if (!p) continue;
        char *nl = std::strchr(p, '\n');
        if (nl) *nl = 0;
        std::fprintf(stderr, "FDINFO %s fd=%s %s\n", label, e->d_name, p);
    }
    closedir(d);
    std::fflush(stderr);
}

static std::vector<size_t> chunks(const char *s)
{
    std::vector<size_t> v;
    for (const char *p = s; *p;) {
        char *e;
        unsigned long long x = std::strtoull(p, &e, 10);
        if (e == p) break;
        if (x) v.push_back(static_cast<size_t>(x));
        p = *e == ',' ? e + 1 : e;
    }
    if (v.empty()) v.push_back(4097);
    return v;
}

static int summary(const char *out, const std::vector<char> &data, uint64_t h)
{
    std::ifstream back(out, std::ios::binary);
    fdinfo_of_path("back", out);
    back.seekg(0, std::ios::end);
    std::streamoff sz = back.tellg();
    back.seekg(0);
    std::vector<char> all(static_cast<size_t>(sz));
    back.read(all.data(), sz);
    uint64_t h2 = fnv(0xcbf29ce484222325ULL, all.data(), static_cast<size_t>(back.gcount()));
    std::printf("copied=%zu fnv=%016llx reread=%lld fnv=%016llx\n", data.size(), static_cast<unsigned long long>(h),
                static_cast<long long>(back.gcount()), static_cast<unsigned long long>(h2));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        std::cerr << "usage: filebuf IN OUT [RCHUNKS WCHUNKS]\n";
        return 2;
    }
    bool odd = argc >= 5;
    std::vector<size_t> rc = chunks(odd ? argv[3] : "1000"), wc = chunks(odd ? argv[4] : "4097");
    std::ifstream in(argv[1], std::ios::binary);
    std::ofstream out(argv[2], std::ios::binary | std::ios::trunc);
    if (!in || !out) {
        std::cout << "open failed\n";
        return 1;
    }
    fdinfo_of_path("in", argv[1]);
    fdinfo_of_path("out", argv[2]);
    std::vector<char> data;
    std::vector<char> buf(1 << 21);
    for (size_t i = 0;; i++) {
        size_t want = rc[i % rc.size()];
        if (want > buf.size()) want = buf.size();
        in.read(buf.data(), static_cast<std::streamsize>(want));
        if (in.gcount() <= 0) break;
        data.insert(data.end(), buf.begin(), buf.begin() + in.gcount());
        if (!in) break;
    }
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t off = 0, i = 0; off < data.size(); i++) {
        size_t n = wc[i % wc.size()];
        if (n > data.size() - off) n = data.size() - off;
        out.write(data.data() + off, static_cast<std::streamsize>(n));
        h = fnv(h, data.data() + off, n);
        off += n;
    }
    out.close();
    if (!odd) return summary(argv[2], data, h);

    // read-modify-write through one std::fstream: odd ranges, seekp/seekg, past the end
    std::fstream rw(argv[2], std::ios::binary | std::ios::in | std::ios::out);
    if (!rw) {
        std::cout << "fstream open failed\n";
        return 1;
    }
    fdinfo_of_path("rw", argv[2]);
    uint64_t s = 0x1234567;
    size_t size = data.size();
    for (int step = 0; step < 24; step++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t off = static_cast<size_t>((s >> 17) % (size + 5000));
        size_t len = wc[static_cast<size_t>(step) % wc.size()] % 70001 + 1;
        if (step % 2 == 0) {
            std::vector<char> p(len);
            for (size_t k = 0; k < len; k++) p[k] = static_cast<char>((off + k) * 31 + static_cast<size_t>(step));
            rw.seekp(static_cast<std::streamoff>(off));
            rw.write(p.data(), static_cast<std::streamsize>(len));
            bool ok = static_cast<bool>(rw);
            rw.clear();
            std::printf("patch off=%zu len=%zu ok=%d\n", off, len, ok ? 1 : 0);
            if (off + len > size) size = off + len;
        } else {
            len = rc[static_cast<size_t>(step) % rc.size()] % 70001 + 1;
            std::vector<char> p(len);
            rw.seekg(static_cast<std::streamoff>(off));
            rw.read(p.data(), static_cast<std::streamsize>(len));
            std::streamsize got = rw.gcount();
            rw.clear();
            std::printf("read off=%zu len=%zu got=%lld fnv=%016llx\n", off, len, static_cast<long long>(got),
                        static_cast<unsigned long long>(fnv(0xcbf29ce484222325ULL, p.data(), static_cast<size_t>(got))));
        }
    }
    rw.close();
    return summary(argv[2], data, h);
}
