// The control socket: a unix stream socket where keepalivectl sends one
// request line ("status" or "peers") and reads one JSON document back.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "net/event_loop.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {

class ControlServer {
public:
    using Handler = std::function<std::string(std::string_view request)>;
    static constexpr std::size_t kMaxClients = 32;
    static constexpr std::size_t kMaxRequest = 256;

    // Binds `path` (replacing a stale socket file, creating its directory);
    // throws std::system_error with the path on failure.
    ControlServer(EventLoop& loop, std::string path, Handler handler);
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    const std::string& path() const { return path_; }

private:
    struct Client {
        UniqueFd fd;
        std::string in;
        std::string out;
        std::size_t written = 0;
        std::uint64_t serial = 0;  // accept order, to find the oldest
    };
    void on_accept();
    void on_client(int fd, std::uint32_t events);
    void close_client(int fd);

    EventLoop& loop_;
    std::string path_;
    Handler handler_;
    UniqueFd listen_fd_;
    std::unordered_map<int, Client> clients_;
    std::uint64_t next_serial_ = 0;
};

}  // namespace keepalive
