#include "daemon/textfile.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "net/unique_fd.hpp"

namespace keepalive {
namespace {

bool write_all(int fd, const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return true;
}

}  // namespace

Result<bool, std::string> replace_file(const std::string& path,
                                       const std::function<bool(std::string&)>& next) {
    // Same directory, so rename() is atomic; a leading dot, so node_exporter
    // (which reads only *.prom) ignores it while it is being written.
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    std::string tmp = dir + "/." + base + ".XXXXXX";
    std::vector<char> name(tmp.begin(), tmp.end());
    name.push_back('\0');
    UniqueFd fd(::mkostemp(name.data(), O_CLOEXEC));
    if (!fd) return Err{"cannot create a file in " + dir + ": " + std::strerror(errno)};
    tmp = name.data();
    const auto fail = [&](const std::string& what) -> Result<bool, std::string> {
        const int error = errno;
        ::unlink(tmp.c_str());
        return Err{what + ": " + std::strerror(error)};
    };
    if (::fchmod(fd.get(), 0644) != 0) return fail("cannot set the mode of " + tmp);
    std::string piece;
    while (next(piece)) {
        if (piece.size() >= 64 * 1024) {
            if (!write_all(fd.get(), piece)) return fail("cannot write " + tmp);
            piece.clear();
        }
    }
    if (!write_all(fd.get(), piece)) return fail("cannot write " + tmp);
    if (::close(fd.release()) != 0) return fail("cannot write " + tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0)
        return fail("cannot rename " + tmp + " to " + path);
    return true;
}

}  // namespace keepalive
