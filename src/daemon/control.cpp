#include "daemon/control.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

namespace keepalive {
namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path) {
    throw std::system_error(errno, std::generic_category(), what + " " + path);
}

}  // namespace

ControlServer::ControlServer(EventLoop& loop, std::string path, Handler handler)
    : loop_(loop), path_(std::move(path)), handler_(std::move(handler)) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path_.size() >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        fail("control socket", path_);
    }
    std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);

    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path_).parent_path(), ec);
    // A socket file left by a previous run would make bind fail; anything
    // else at that path is not ours to remove.
    struct stat st {};
    if (lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path_.c_str());

    listen_fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listen_fd_) fail("socket for", path_);
    if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
        fail("cannot bind control socket", path_);
    ::chmod(path_.c_str(), 0660);
    if (::listen(listen_fd_.get(), 16) != 0) fail("cannot listen on control socket", path_);
    loop_.add_fd(listen_fd_.get(), EPOLLIN, [this](std::uint32_t) { on_accept(); });
}

ControlServer::~ControlServer() {
    for (auto& [fd, client] : clients_) loop_.remove_fd(fd);
    if (listen_fd_) {
        loop_.remove_fd(listen_fd_.get());
        ::unlink(path_.c_str());
    }
}

void ControlServer::on_accept() {
    for (;;) {
        UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd) return;  // EAGAIN, or a transient error: try again on the next wake-up
        // When full, the oldest client goes: one that connects and says nothing
        // must not lock keepalivectl out for good.
        if (clients_.size() >= kMaxClients) {
            const auto oldest = std::min_element(
                clients_.begin(), clients_.end(),
                [](const auto& a, const auto& b) { return a.second.serial < b.second.serial; });
            close_client(oldest->first);
        }
        const int raw = fd.get();
        clients_.emplace(raw, Client{std::move(fd), {}, {}, 0, next_serial_++});
        loop_.add_fd(raw, EPOLLIN, [this, raw](std::uint32_t events) { on_client(raw, events); });
    }
}

void ControlServer::on_client(int fd, std::uint32_t events) {
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    Client& c = it->second;
    if (c.out.empty()) {
        char buf[kMaxRequest];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            close_client(fd);
            return;
        }
        if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
        const auto nl = c.in.find('\n');
        if (nl == std::string::npos) {
            if (c.in.size() >= kMaxRequest) close_client(fd);
            return;
        }
        c.out = handler_(std::string_view(c.in).substr(0, nl));
        loop_.modify_fd(fd, EPOLLOUT);
        events |= EPOLLOUT;
    }
    if ((events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) == 0) return;
    while (c.written < c.out.size()) {
        const ssize_t n =
            ::send(fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            break;
        }
        c.written += static_cast<std::size_t>(n);
    }
    close_client(fd);
}

void ControlServer::close_client(int fd) {
    loop_.remove_fd(fd);
    clients_.erase(fd);
}

}  // namespace keepalive
