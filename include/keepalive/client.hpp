// keepalive client library: the peer side of KAP/1 for programs that run their
// own event loop. The client never blocks: poll fd() for readability and call
// on_readable(); call on_timeout() once next_deadline() has passed.
//
//     keepalive::Client client({.server = "10.0.0.1:7371", .name = "db1"});
//     client.start();
//     // in your loop: wait for client.fd() readable or client.next_deadline()
//     client.on_readable();   // when readable
//     client.on_timeout();    // when the deadline passed (harmless if early)
//     client.stop();          // says goodbye
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace keepalive {

struct ClientOptions {
    std::string server;  // "host:port", "[v6]:port" or "host" (port 7371)
    std::string bind;    // optional local address, "addr" or "addr:port"
    std::string name;    // 1..64 of A-Z a-z 0-9 . _ - : @
    std::chrono::milliseconds interval{1000};
    unsigned probes = 3;
    // Optional: a keys file (lines of "ID HEX-KEY", mode 0600; see keepalive-peer(1)).
    // With it every datagram is signed with the first key and every datagram from
    // the server must be signed with one of the keys; without it nothing is signed.
    std::string keys_file;
};

enum class ClientEvent {
    registered,        // the server accepted us
    server_restarted,  // ... and it is a new server instance (new epoch)
    rejected,          // the server refused us; diag says why; retrying with backoff
    lost,              // no probe for too long: registering again
    goodbye,           // the server said goodbye; diag says why; registering again,
                       // except for diag 8 (restarting): the session is kept
};

struct ClientNotice {
    ClientEvent event;
    int diag = 0;         // KAP/1 diag code where one applies
    std::string message;  // a sentence for a log
};

class Client {
public:
    using Clock = std::chrono::steady_clock;
    using Handler = std::function<void(const ClientNotice&)>;

    // Resolves the server address and opens the socket; throws
    // std::invalid_argument on bad options and std::system_error on socket errors.
    explicit Client(ClientOptions options, Handler on_event = {});
    ~Client();
    Client(Client&&) noexcept;
    Client& operator=(Client&&) noexcept;

    void start();    // sends the first REGISTER
    int fd() const;  // poll for readability
    std::optional<Clock::time_point> next_deadline() const;
    void on_readable();  // drains the socket
    void on_timeout();   // runs what is due
    void stop();         // BYE (shutting down) if registered
    // Reads options.keys_file again (for key rotation); the session goes on. On a
    // bad file throws std::invalid_argument ("FILE:LINE:COLUMN: ...") and keeps the old keys.
    void reload_keys();

    bool registered() const;
    std::uint32_t session() const;
    std::chrono::milliseconds granted_interval() const;
    unsigned granted_probes() const;
    std::string server_address() const;
    std::string local_address() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keepalive
