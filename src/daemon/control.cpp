#include "daemon/control.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "daemon/control_request.hpp"

namespace keepalive {
namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path) {
    throw std::system_error(errno, std::generic_category(), what + " " + path);
}

UniqueFd open_reserve() {
    return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

// Adds the CPU time of its scope to `total`.
class CpuTimeSpent {
public:
    explicit CpuTimeSpent(Duration& total) : total_(total), start_(thread_cpu_time()) {}
    ~CpuTimeSpent() { total_ += thread_cpu_time() - start_; }
    CpuTimeSpent(const CpuTimeSpent&) = delete;
    CpuTimeSpent& operator=(const CpuTimeSpent&) = delete;

private:
    Duration& total_;
    Duration start_;
};

}  // namespace

ControlServer::Producer ControlServer::whole(std::string answer) {
    return [answer = std::move(answer)](std::string& out) mutable {
        out += answer;
        return false;
    };
}

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
    if (::listen(listen_fd_.get(), kBacklog) != 0) {
        const int saved = errno;
        ::unlink(path_.c_str());
        errno = saved;
        fail("cannot listen on control socket", path_);
    }
    reserve_fd_ = open_reserve();
    retry_timer_ = loop_.add_timer([this] {
        if (!reserve_fd_) reserve_fd_ = open_reserve();
        set_accepting(true);
    });
    loop_.add_fd(listen_fd_.get(), EPOLLIN, [this](std::uint32_t) { on_accept(); });
}

ControlServer::~ControlServer() {
    loop_.arm_timer(retry_timer_, std::nullopt);  // the loop outlives us: never call back
    for (auto& [fd, client] : clients_) loop_.remove_fd(fd);
    if (listen_fd_) {
        loop_.remove_fd(listen_fd_.get());
        ::unlink(path_.c_str());
    }
}

void ControlServer::set_accepting(bool on) {
    if (accepting_ == on) return;
    accepting_ = on;
    // Level-triggered: while not accepting, waiting connections must not
    // wake the loop again and again.
    loop_.modify_fd(listen_fd_.get(), on ? std::uint32_t{EPOLLIN} : std::uint32_t{0});
}

// Frees one client slot by closing the oldest client that has been silent
// about its request for a while: one that connects and says nothing must not
// lock keepalivectl out, and one whose request is on its way, or is being
// answered, must never be cut off (its reader would see a reset).
bool ControlServer::make_room() {
    auto oldest = clients_.end();
    for (auto it = clients_.begin(); it != clients_.end(); ++it)
        if (!it->second.producer && loop_.now() - it->second.accepted_at >= kIdleGrace &&
            (oldest == clients_.end() || it->second.serial < oldest->second.serial))
            oldest = it;
    if (oldest == clients_.end()) return false;
    close_client(oldest->first);
    return true;
}

// Connections wait in the backlog until a client leaves, or for a short
// while, whichever comes first.
void ControlServer::pause_accepting() {
    set_accepting(false);
    loop_.arm_timer(retry_timer_, loop_.now() + kRetryAfter);
}

void ControlServer::on_accept() {
    const CpuTimeSpent spent(cpu_time_);
    // Bounded: at most one backlog's worth per wake-up.
    for (int i = 0; i < kBacklog; ++i) {
        if (clients_.size() >= kMaxClients && !make_room()) {
            pause_accepting();
            return;
        }
        UniqueFd fd(
            loop_.sys().accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd) {
            if (errno == EMFILE || errno == ENFILE) {
                // Out of descriptors. An idle client's is the cheapest to
                // give back; else the reserve buys one to refuse with.
                if (make_room()) continue;
                ++refused_no_fd_;
                reserve_fd_.reset();
                UniqueFd(loop_.sys().accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
                reserve_fd_ = open_reserve();
                if (!reserve_fd_) {
                    pause_accepting();  // nothing left to give back: wait, never spin
                    return;
                }
                continue;
            }
            return;  // EAGAIN, or a transient error: try again on the next wake-up
        }
        const int raw = fd.get();
        clients_.emplace(
            raw, Client{std::move(fd), {}, {}, {}, 0, false, false, next_serial_++, loop_.now()});
        try {
            loop_.add_fd(raw, EPOLLIN,
                         [this, raw](std::uint32_t events) { on_client(raw, events); });
        } catch (const std::system_error&) {
            // epoll cannot watch one more fd (ENOMEM, or ENOSPC past the
            // user's max_user_watches): refuse this one and wait a little.
            clients_.erase(raw);
            ++refused_no_fd_;
            pause_accepting();
            return;
        }
    }
}

void ControlServer::on_client(int fd, std::uint32_t events) {
    const CpuTimeSpent spent(cpu_time_);
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    Client& c = it->second;
    if (!c.producer) {
        read_request(fd, c);
        return;
    }
    if (c.idle) {
        // Only a hang-up (or stray bytes) can wake an idle client.
        char sink[kMaxRequest];
        const ssize_t n = loop_.sys().recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) close_client(fd);
        return;
    }
    if ((events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0) write_answer(fd, c);
}

void ControlServer::wake() {
    for (auto& [fd, c] : clients_)
        if (c.idle) {
            c.idle = false;
            loop_.modify_fd(fd, EPOLLOUT);
        }
}

void ControlServer::read_request(int fd, Client& c) {
    char buf[kMaxRequest];
    const ssize_t n = loop_.sys().recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        close_client(fd);
        return;
    }
    if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
    const RequestFraming framed = frame_request(c.in, kMaxRequest);
    if (framed.state == RequestFraming::State::too_long) close_client(fd);
    if (framed.state != RequestFraming::State::complete) return;
    c.producer = handler_(framed.line);
    loop_.modify_fd(fd, EPOLLOUT);
}

// One piece per wake-up: the socket's readiness paces the producer.
void ControlServer::write_answer(int fd, Client& c) {
    if (c.written == c.out.size()) {
        c.out.clear();
        c.written = 0;
        if (!c.complete) c.complete = !c.producer(c.out);
        if (c.out.empty() && !c.complete) {
            c.idle = true;
            loop_.modify_fd(fd, EPOLLIN);
            return;
        }
    }
    while (c.written < c.out.size()) {
        const ssize_t n =
            loop_.sys().send(fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            close_client(fd);  // the reader went away
            return;
        }
        c.written += static_cast<std::size_t>(n);
    }
    if (!c.complete) return;
    // Bytes left unread when a unix socket closes reach the client as a
    // reset instead of the end of the answer: discard them first.
    char sink[kMaxRequest];
    for (int i = 0; i < 16 && loop_.sys().recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
    }
    close_client(fd);
}

void ControlServer::close_client(int fd) {
    loop_.remove_fd(fd);
    clients_.erase(fd);
    set_accepting(true);
}

}  // namespace keepalive
