// The control socket: a unix stream socket where keepalivectl sends one
// request line ("status", "peers", ...) and reads the answer until EOF.
//
// An answer is streamed: the handler returns a producer that the server asks
// for one bounded piece at a time, and only when the client's socket can take
// more. However large the peer table, no loop iteration spends more than one
// piece's worth of work on a client, so a query never delays a probe or an ACK.
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
    // Appends the next piece of an answer to `out`; returns false once the
    // answer is complete (the piece appended by that call, if any, is its last).
    using Producer = std::function<bool(std::string& out)>;
    using Handler = std::function<Producer(std::string_view request)>;

    // Clients served at once. Past this, connections wait in the listen
    // backlog; only clients that have not sent a whole request yet are ever
    // evicted, so an answer is never cut short.
    static constexpr std::size_t kMaxClients = 64;
    static constexpr std::size_t kMaxRequest = 256;
    static constexpr int kBacklog = 128;
    static constexpr Duration kRetryAfter = std::chrono::milliseconds(100);
    // A client silent about its request for this long may be evicted to make
    // room; a younger one may just not have been read yet.
    static constexpr Duration kIdleGrace = std::chrono::seconds(1);

    // Binds `path` (replacing a stale socket file, creating its directory);
    // throws std::system_error with the path on failure.
    ControlServer(EventLoop& loop, std::string path, Handler handler);
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    const std::string& path() const { return path_; }
    // Connections closed unanswered because the daemon was out of file
    // descriptors (or epoll could watch no more).
    std::uint64_t refused_no_fd() const { return refused_no_fd_; }
    // CPU time this thread has spent serving clients (accepting, reading
    // requests, producing and writing answers), so that the daemon can leave
    // it out of its load.
    Duration cpu_time() const { return cpu_time_; }

    // A producer for an answer that is already whole.
    static Producer whole(std::string answer);

    // A producer that appends nothing and returns true has nothing to say yet
    // (a stream waiting for events): its client is left alone, watched only
    // for hang-up, until wake() asks every such producer again.
    void wake();

private:
    struct Client {
        UniqueFd fd;
        std::string in;
        Producer producer;  // empty until the request line is in
        std::string out;
        std::size_t written = 0;
        bool complete = false;     // the producer has given its last piece
        bool idle = false;         // the producer had nothing: wait for wake()
        std::uint64_t serial = 0;  // accept order, to find the oldest
        TimePoint accepted_at{};
    };
    void on_accept();
    bool make_room();
    void pause_accepting();
    void set_accepting(bool on);
    void on_client(int fd, std::uint32_t events);
    void read_request(int fd, Client& c);
    void write_answer(int fd, Client& c);
    void close_client(int fd);

    EventLoop& loop_;
    std::string path_;
    Handler handler_;
    UniqueFd listen_fd_;
    // Held open so that at the descriptor limit one can be freed to accept
    // and close a connection, instead of leaving it in the backlog where
    // level-triggered epoll would report it again at once, forever.
    UniqueFd reserve_fd_;
    EventLoop::TimerId retry_timer_{};
    bool accepting_ = true;
    std::unordered_map<int, Client> clients_;
    std::uint64_t next_serial_ = 0;
    std::uint64_t refused_no_fd_ = 0;
    Duration cpu_time_{};
};

}  // namespace keepalive
