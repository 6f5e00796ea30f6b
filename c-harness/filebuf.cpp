// filebuf IN OUT
//
// libstdc++ std::basic_filebuf: opens with fopen (inside glibc) and then calls read(2) and
// write(2) on fileno() through the dynamic linker. Copies IN to OUT with
// std::ifstream::read(1000-byte chunks) and std::ofstream::write(4097-byte chunks), then
// re-reads OUT with seekg/read and prints "copied=<n> fnv=<hash> reread=<n> fnv=<hash>".
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <vector>

static uint64_t fnv(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= static_cast<unsigned char>(p[i]);
        h *= 0x100000001b3ULL;
    }
    return h;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        std::cerr << "usage: filebuf IN OUT\n";
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    std::ofstream out(argv[2], std::ios::binary | std::ios::trunc);
    if (!in || !out) {
        std::cout << "open failed\n";
        return 1;
    }
    std::vector<char> data;
    std::vector<char> buf(1000);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0)
        data.insert(data.end(), buf.begin(), buf.begin() + in.gcount());
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t off = 0; off < data.size(); off += 4097) {
        size_t n = data.size() - off < 4097 ? data.size() - off : 4097;
        out.write(data.data() + off, static_cast<std::streamsize>(n));
        h = fnv(h, data.data() + off, n);
    }
    out.close();
    std::ifstream back(argv[2], std::ios::binary);
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
