// End-to-end tests of the Go keepalive module compatibility: the real
// keepalived with its legacy listener on 127.0.0.2 against a scripted old-style
// ka-client, keepalive-peer --legacy against a scripted old-style ka-server on
// 127.0.0.4, and keepalive-peer --legacy against keepalived. The scripted
// sides are written from the wire description in the issue, not from
// core/legacy.hpp, so that they check the implementation rather than echo it.
//
// Loopback only. The legacy ports are the protocol's fixed 5001/5002, each on
// its own 127.0.0.x address; the tests of one binary run one at a time. Every
// wait polls with a generous limit; nothing sleeps for a fixed time and then
// asserts.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;

constexpr const char* kServerIp = "127.0.0.2";        // keepalived's legacy address
constexpr const char* kOldClientIp = "127.0.0.3";     // the scripted ka-client
constexpr const char* kOldServerIp = "127.0.0.4";     // the scripted ka-server
constexpr const char* kPeerIp = "127.0.0.5";          // keepalive-peer against the old server
constexpr const char* kPeerToDaemonIp = "127.0.0.6";  // keepalive-peer against keepalived
constexpr const char* kIntruderIp = "127.0.0.9";      // someone else on the network
constexpr std::uint16_t kRegisterPort = 5001;
constexpr std::uint16_t kProbePort = 5002;

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

std::string shown(std::string_view s) {
    std::string out;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u == 0) {
            out += "\\0";
        } else if (u < 0x20 || u >= 0x7f) {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            out += hex;
        } else {
            out += c;
        }
    }
    return out;
}

double seconds(Clock::duration d) {
    return std::chrono::duration<double>(d).count();
}

struct Datagram {
    std::string bytes;
    std::string from_ip;
    std::uint16_t from_port = 0;
    Clock::time_point at;             // when the test read it (later under load)
    std::chrono::nanoseconds kernel;  // when the kernel queued it (SO_TIMESTAMPNS, wall clock)
};

// Time between two arrivals, as the kernel saw them: immune to the test
// thread being scheduled late.
double gap(const Datagram& earlier, const Datagram& later) {
    return std::chrono::duration<double>(later.kernel - earlier.kernel).count();
}

sockaddr_in v4(const std::string& ip, std::uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr) != 1) fail("bad IPv4 address " + ip);
    return sa;
}

// A UDP socket bound to ip:port (0: any port), as the old Go programs used them.
class Udp {
public:
    Udp(const std::string& ip, std::uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) fail("socket: " + std::string(std::strerror(errno)));
        const int on = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
        const sockaddr_in sa = v4(ip, port);
        if (::bind(fd_, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
            const std::string why = std::strerror(errno);
            ::close(fd_);
            fail("bind " + ip + ":" + std::to_string(port) + ": " + why);
        }
    }
    ~Udp() {
        if (fd_ >= 0) ::close(fd_);
    }
    Udp(const Udp&) = delete;
    Udp& operator=(const Udp&) = delete;

    int fd() const { return fd_; }
    std::uint16_t port() const {
        sockaddr_in sa{};
        socklen_t len = sizeof sa;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
        return ntohs(sa.sin_port);
    }
    // Like the old client's net.DialUDP: only datagrams from ip:port arrive.
    void connect(const std::string& ip, std::uint16_t port) {
        const sockaddr_in sa = v4(ip, port);
        if (::connect(fd_, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0)
            fail("connect: " + std::string(std::strerror(errno)));
    }
    void send_to(const std::string& ip, std::uint16_t port, std::string_view data) const {
        const sockaddr_in sa = v4(ip, port);
        const ssize_t n = ::sendto(fd_, data.data(), data.size(), 0,
                                   reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
        if (n != static_cast<ssize_t>(data.size()))
            fail("sendto " + ip + ":" + std::to_string(port) + ": " + std::strerror(errno));
    }
    void send(std::string_view data) const {
        if (::send(fd_, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size()))
            fail("send: " + std::string(std::strerror(errno)));
    }
    // The next datagram within `timeout`, or nullopt.
    std::optional<Datagram> receive(Millis timeout) const {
        const auto deadline = Clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
            pollfd p{fd_, POLLIN, 0};
            const int r = ::poll(&p, 1, static_cast<int>(std::max<Millis::rep>(0, left.count())));
            if (r < 0 && errno != EINTR) fail("poll: " + std::string(std::strerror(errno)));
            if (r > 0) {
                std::array<char, 4096> buf;
                sockaddr_in from{};
                iovec iov{buf.data(), buf.size()};
                alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(timespec))> control{};
                msghdr msg{};
                msg.msg_name = &from;
                msg.msg_namelen = sizeof from;
                msg.msg_iov = &iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.data();
                msg.msg_controllen = control.size();
                const ssize_t n = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
                if (n >= 0) {
                    Datagram d{std::string(buf.data(), static_cast<std::size_t>(n)),
                               "",
                               ntohs(from.sin_port),
                               Clock::now(),
                               {}};
                    char ip[INET_ADDRSTRLEN] = {};
                    ::inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
                    d.from_ip = ip;
                    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                            timespec ts{};
                            std::memcpy(&ts, CMSG_DATA(c), sizeof ts);
                            d.kernel = std::chrono::seconds(ts.tv_sec) +
                                       std::chrono::nanoseconds(ts.tv_nsec);
                        }
                    }
                    if (d.kernel == std::chrono::nanoseconds::zero())
                        fail("no SO_TIMESTAMPNS on a received datagram");
                    return d;
                }
            }
            if (Clock::now() >= deadline) return std::nullopt;
        }
    }
    // Discards whatever is queued now.
    std::size_t drain() const {
        std::size_t n = 0;
        while (receive(Millis(0))) ++n;
        return n;
    }

private:
    int fd_ = -1;
};

// The reply of the old ka-client to a probe: its name, ':', then everything
// after the first ':' of its 256-byte receive buffer (NUL where nothing was read).
std::optional<std::string> old_client_reply(const std::string& name, std::string_view probe) {
    std::array<char, 256> buf{};
    std::copy_n(probe.begin(), std::min(probe.size(), buf.size()), buf.begin());
    const auto end = buf.begin() + static_cast<long>(std::min(probe.size(), buf.size()));
    const auto colon = std::find(buf.begin(), end, ':');
    if (colon == end) return std::nullopt;
    return name + ":" + std::string(colon + 1, buf.end());
}

// A scripted old ka-client: registers `name:interval:probes` from an ephemeral
// port on its IP and answers probes on IP:5002 from a socket connected to the
// server's IP:5002, on a thread of its own so that answers never wait for the test.
class OldClient {
public:
    OldClient(std::string name, std::string ip, std::string server_ip)
        : name_(std::move(name)),
          ip_(std::move(ip)),
          server_ip_(std::move(server_ip)),
          registrar_(ip_, 0),
          probe_(ip_, kProbePort) {
        probe_.connect(server_ip_, kProbePort);
        thread_ = std::thread([this] { serve(); });
    }
    ~OldClient() {
        stop_ = true;
        thread_.join();
    }
    OldClient(const OldClient&) = delete;
    OldClient& operator=(const OldClient&) = delete;

    void register_now(int interval_s, int probes) const {
        registrar_.send_to(server_ip_, kRegisterPort,
                           name_ + ":" + std::to_string(interval_s) + ":" + std::to_string(probes));
    }
    // Stops or resumes answering; returns the time of the change.
    Clock::time_point set_answering(bool on) {
        std::lock_guard lock(mutex_);
        answering_ = on;
        return Clock::now();
    }
    std::vector<Datagram> probes() const {
        std::lock_guard lock(mutex_);
        return probes_;
    }
    std::size_t answered() const {
        std::lock_guard lock(mutex_);
        return answered_;
    }

private:
    void serve() {
        while (!stop_) {
            const auto d = probe_.receive(Millis(50));
            if (!d) continue;
            std::lock_guard lock(mutex_);
            probes_.push_back(*d);
            if (!answering_) continue;
            if (const auto reply = old_client_reply(name_, d->bytes)) {
                probe_.send(*reply);
                ++answered_;
            }
        }
    }

    std::string name_;
    std::string ip_;
    std::string server_ip_;
    Udp registrar_;
    Udp probe_;
    mutable std::mutex mutex_;
    bool answering_ = true;
    std::vector<Datagram> probes_;
    std::size_t answered_ = 0;
    std::atomic<bool> stop_ = false;
    std::thread thread_;
};

// keepalived with the legacy listener on 127.0.0.2:5001/5002 and KAP/1 on 127.0.0.2:random.
class LegacyDaemonTest : public ::testing::Test {
protected:
    LegacyDaemonTest() {
        config_.listen.push_back(std::string(kServerIp) + ":" + std::to_string(free_udp_port()));
        config_.control_socket = dir_.file("control.sock");
        config_.down_probe_interval = "1s";
    }

    void start_daemon(const std::string& log_target = "stderr") {
        const std::string path = dir_.file("keepalived.toml");
        write_file(path, config_.to_toml() + "\n[legacy]\nenable = true\naddress = \"" + kServerIp +
                             "\"\nregister_port = " + std::to_string(register_port_) +
                             "\nprobe_port = " + std::to_string(probe_port_) + "\n");
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived.log");
        options.stdout_path = options.stderr_path;
        daemon_.emplace(Strings{keepalived_path(), "--config", path, "--log-target", log_target},
                        std::move(options));
        const bool ready = wait_until(
            [&] { return !daemon_->running() || try_ctl_json(ctl({"status"})).has_value(); });
        if (!ready || !daemon_->running()) fail("keepalived did not come up:\n" + daemon_log());
        const json status = ctl_json(ctl({"status"}));
        const std::string listen = status.at("daemon").at("listen").dump();
        const std::string ip = std::string(kServerIp) + ":";
        if (listen.find(ip + std::to_string(register_port_) + " (legacy)") == std::string::npos ||
            listen.find(ip + std::to_string(probe_port_) + " (legacy)") == std::string::npos)
            fail("the legacy sockets are not listed: " + listen);
    }

    Strings ctl(Strings args) const {
        args.insert(args.begin(), {"--socket", config_.control_socket});
        return args;
    }
    std::string daemon_log() const { return daemon_ ? daemon_->stderr_text() : std::string(); }

    // Cheap polling through the control socket; assertions use keepalivectl.
    std::optional<json> peer_entry(const std::string& name) const {
        const json peers = control_request(config_.control_socket, "peers").at("peers");
        for (const auto& p : peers)
            if (p.at("name") == name) return p;
        return std::nullopt;
    }
    std::optional<json> ctl_peer(const std::string& name) const {
        const json all = ctl_json(ctl({"peers"}));  // kept alive: the loop walks into it
        for (const auto& p : all.at("peers"))
            if (p.at("name") == name) return p;
        return std::nullopt;
    }
    std::string state_of(const std::string& name) const {
        const auto p = peer_entry(name);
        return p ? p->at("state").get<std::string>() : std::string("absent");
    }
    void wait_for_state(const std::string& name, const std::string& state) {
        if (!wait_until([&] { return state_of(name) == state; }))
            fail("peer " + name + " did not become " + state + " (it is " + state_of(name) +
                 ")\ndaemon log:\n" + daemon_log());
    }
    json drops() const { return control_request(config_.control_socket, "status").at("drops"); }
    std::uint64_t drop(const std::string& counter) const {
        return drops().at(counter).get<std::uint64_t>();
    }
    std::uint64_t total_drops() const {
        return control_request(config_.control_socket, "status")
            .at("datagrams_dropped")
            .get<std::uint64_t>();
    }

    // Waits until `name` is down and checks that the daemon's down instant lies
    // within [probes×interval − interval, probes×interval + 2 s] after `stopped`.
    void expect_down_on_time(const std::string& name, Clock::time_point stopped,
                             Clock::duration detection, Clock::duration interval) {
        std::optional<Clock::time_point> earliest;
        std::optional<Clock::time_point> latest;
        const bool down = wait_until([&] {
            const auto before = Clock::now();
            const auto p = peer_entry(name);
            const auto after = Clock::now();
            if (!p || p->at("state") != "down") return false;
            const auto since = std::chrono::duration_cast<Clock::duration>(
                std::chrono::duration<double>(p->at("since").get<double>()));
            earliest = before - since;  // the daemon's down instant, bounded by
            latest = after - since;     // the request's start and end
            return true;
        });
        ASSERT_TRUE(down) << name << " is " << state_of(name) << "\n" << daemon_log();
        EXPECT_GE(*latest, stopped + detection - interval)
            << "down " << seconds(*latest - stopped) << " s after it stopped answering";
        EXPECT_LE(*earliest, stopped + detection + std::chrono::seconds(2))
            << "down " << seconds(*earliest - stopped) << " s after it stopped answering";
        std::cout << name << " down " << seconds(*earliest - stopped) << " .. "
                  << seconds(*latest - stopped) << " s after it stopped answering (detection "
                  << seconds(detection) << " s)" << std::endl;
    }

    TempDir dir_;  // first: outlives the processes writing into it
    DaemonConfig config_;
    std::uint16_t register_port_ = kRegisterPort;
    std::uint16_t probe_port_ = kProbePort;
    std::optional<Process> daemon_;
};

std::string probe_text(std::uint64_t token) {
    return "keepalive:" + std::to_string(token);
}

// ---- (a) a scripted old ka-client against keepalived --------------------------------

TEST_F(LegacyDaemonTest, OldClientComesUpIsProbedAndIsDeclaredDownOnTime) {
    start_daemon();
    OldClient client("oldpeer1", kOldClientIp, kServerIp);
    client.register_now(1, 3);
    wait_for_state("oldpeer1", "up");

    const auto shown_peer = ctl_peer("oldpeer1");
    ASSERT_TRUE(shown_peer);
    EXPECT_EQ(shown_peer->at("protocol"), "legacy");
    EXPECT_EQ(shown_peer->at("address"), "127.0.0.3:5002");  // the registration's IP, port 5002
    EXPECT_EQ(shown_peer->at("interval_ms"), 1000);
    EXPECT_EQ(shown_peer->at("probes"), 3);
    EXPECT_NE(
        daemon_log().find("peer oldpeer1 (127.0.0.3:5002) registered: interval 1000 ms, 3 probes"),
        std::string::npos)
        << daemon_log();

    // Probed with tokens 1, 2, 3, ... from 127.0.0.2:5002, and every answer counts.
    ASSERT_TRUE(wait_until([&] {
        const auto p = peer_entry("oldpeer1");
        return client.probes().size() >= 4 && p && p->at("acks_received").get<int>() >= 4;
    })) << "probes: "
        << client.probes().size() << "\n"
        << daemon_log();
    const auto probes = client.probes();
    for (std::size_t i = 0; i < probes.size(); ++i) {
        EXPECT_EQ(probes[i].bytes, probe_text(i + 1))
            << "probe " << i << ": " << shown(probes[i].bytes);
        EXPECT_EQ(probes[i].from_ip, kServerIp);
        EXPECT_EQ(probes[i].from_port, kProbePort);
    }
    // One interval apart on average (the exact grid is the unit tests' business).
    const double spacing =
        gap(probes.front(), probes.back()) / static_cast<double>(probes.size() - 1);
    EXPECT_GT(spacing, 0.7);
    EXPECT_LT(spacing, 1.5);
    const auto up = ctl_peer("oldpeer1");
    ASSERT_TRUE(up);
    EXPECT_EQ(up->at("state"), "up");
    EXPECT_FALSE(up->at("rtt_us").is_null());
    EXPECT_EQ(ctl_json(ctl({"status"})).at("drops").at("stale_ack"), 0);

    // The client dies (stops answering): down on time, and reported.
    const auto stopped = client.set_answering(false);
    expect_down_on_time("oldpeer1", stopped, std::chrono::seconds(3), std::chrono::seconds(1));
    EXPECT_EQ(ctl_json(ctl({"status"})).at("down"), 1);
    ASSERT_TRUE(wait_until([&] {
        return daemon_log().find(
                   "peer oldpeer1 (127.0.0.3:5002) is down: detection time expired") !=
               std::string::npos;
    })) << daemon_log();

    // Still probed slowly, tokens still counting.
    const std::size_t n = client.probes().size();
    ASSERT_TRUE(wait_until([&] { return client.probes().size() >= n + 2; }));
    const auto later = client.probes();
    for (std::size_t i = 0; i < later.size(); ++i) EXPECT_EQ(later[i].bytes, probe_text(i + 1));

    // The old client is started again: it registers, the token restarts at 1.
    const std::size_t before = client.probes().size();
    client.set_answering(true);
    client.register_now(1, 3);
    wait_for_state("oldpeer1", "up");
    ASSERT_TRUE(wait_until([&] {
        const auto p = client.probes();
        return p.size() > before + 1 &&
               std::any_of(p.begin() + static_cast<long>(before), p.end(),
                           [](const Datagram& d) { return d.bytes == "keepalive:2"; });
    })) << daemon_log();
    // Right after the registration, the probes restart from 1 (a slow probe of the
    // old run may still have crossed it).
    const auto again = client.probes();
    std::vector<std::string> fresh;
    for (std::size_t i = before; i < again.size(); ++i) fresh.push_back(again[i].bytes);
    const auto one = std::find(fresh.begin(), fresh.end(), "keepalive:1");
    ASSERT_NE(one, fresh.end());
    ASSERT_NE(one + 1, fresh.end());
    EXPECT_EQ(*(one + 1), "keepalive:2");
    const auto entries = ctl_json(ctl({"peers"})).at("peers");
    EXPECT_EQ(entries.size(), 1u) << entries.dump();
    EXPECT_TRUE(daemon_->running());
}

// ---- (b) garbage on 5001 and 5002 ---------------------------------------------------

TEST_F(LegacyDaemonTest, GarbageOnTheLegacyPortsChangesNothing) {
    start_daemon();
    OldClient client("oldpeer2", kOldClientIp, kServerIp);
    client.register_now(1, 3);
    wait_for_state("oldpeer2", "up");
    ASSERT_TRUE(wait_until([&] {
        const auto p = peer_entry("oldpeer2");
        return p && p->at("acks_received").get<int>() >= 2;
    }));
    const json drops_before = drops();
    for (const auto& [counter, value] : drops_before.items())
        EXPECT_EQ(value, 0) << counter << " before any garbage";

    const std::uint64_t seed = test_seed();
    std::mt19937_64 rng(seed);
    Udp intruder(kIntruderIp, 0);  // another host
    Udp intruder_probe(kIntruderIp, kProbePort);
    Udp same_host(kOldClientIp, 0);  // the registered IP, another port

    // Sends in small groups and waits for each to be counted, so a loaded
    // machine cannot overflow the daemon's socket buffers.
    std::uint64_t sent = 0;
    const auto settle = [&] {
        ASSERT_TRUE(wait_until([&] { return total_drops() >= sent; }))
            << "counted " << total_drops() << " of " << sent << ": " << drops().dump();
    };
    std::map<std::string, std::uint64_t> expected;
    const auto send = [&](const Udp& from, std::uint16_t port, std::string_view bytes,
                          const std::string& counter) {
        from.send_to(kServerIp, port, bytes);
        ++expected[counter];
        if (++sent % 16 == 0) settle();
    };

    // Random bytes on both ports, without ':': malformed as a registration and as a reply.
    for (int i = 0; i < 100; ++i) {
        std::string b(1 + rng() % 300, '\0');
        for (auto& c : b) c = static_cast<char>(rng());
        std::replace(b.begin(), b.end(), ':', ';');  // no ':' at all: malformed on both ports
        send(intruder, i % 2 ? kRegisterPort : kProbePort, b, "legacy_malformed");
    }
    // Malformed registrations, from another host and from the client's own IP.
    const Strings bad_registrations = {
        "",
        "oldpeer2",
        "oldpeer2:1",
        "oldpeer2:1:3:4",
        "oldpeer2:0:3",
        "oldpeer2:1:0",
        "oldpeer2:+1:3",
        "oldpeer2:-1:3",
        "oldpeer2:01:3",
        "oldpeer2: 1:3",
        "oldpeer2:1:3\n",
        std::string("oldpeer2:1:3\0", 13),
        "oldpeer2:3601:3",
        "oldpeer2:1:256",
        "oldpeer2:99999999999999999999999:3",
        "old peer:1:3",
        "old/peer:1:3",
        "old\xc3\xa9peer:1:3",
        std::string(65, 'n') + ":1:3",
        "keepalive:1",
    };
    for (const auto& r : bad_registrations) {
        send(intruder, kRegisterPort, r, "legacy_malformed");
        send(same_host, kRegisterPort, r, "legacy_malformed");
    }
    // A valid registration for the live name from another host is refused.
    send(intruder, kRegisterPort, "oldpeer2:1:3", "legacy_refused");
    send(intruder, kRegisterPort, "oldpeer2:5:1", "legacy_refused");

    // Replies: malformed ones, for unknown names, from another host for the live
    // name, and with tokens the server never sent.
    const Strings bad_replies = {
        "oldpeer2:",
        "oldpeer2:0",
        "oldpeer2:-5",
        "oldpeer2:5x",
        "oldpeer2:1:1",
        ":1",
        std::string("oldpeer2:\0\0\0", 12),
    };
    for (const auto& r : bad_replies) send(intruder, kProbePort, r, "legacy_malformed");
    for (const auto& r : bad_replies) send(same_host, kProbePort, r, "legacy_malformed");
    send(intruder_probe, kProbePort, "nobody:1", "legacy_unknown");
    send(same_host, kProbePort, "nobody:1", "legacy_unknown");
    const std::uint64_t token = client.probes().size();
    for (std::uint64_t t : {token, token + 1, std::uint64_t{1}}) {
        send(intruder_probe, kProbePort, *old_client_reply("oldpeer2", probe_text(t)),
             "legacy_unknown");
        send(intruder, kProbePort, "oldpeer2:" + std::to_string(t), "legacy_unknown");
    }
    for (std::uint64_t t : {token + 1000, std::uint64_t{18446744073709551615ull}})
        send(same_host, kProbePort, *old_client_reply("oldpeer2", probe_text(t)), "stale_ack");
    settle();

    // Every datagram was counted under its reason, nothing else was.
    ASSERT_TRUE(wait_until([&] {
        const json d = drops();
        for (const auto& [counter, n] : expected)
            if (d.at(counter).get<std::uint64_t>() < n) return false;
        return true;
    })) << drops().dump();
    const json after = ctl_json(ctl({"status"}));
    for (const auto& [counter, value] : after.at("drops").items()) {
        const auto it = expected.find(counter);
        EXPECT_EQ(value.get<std::uint64_t>(), it == expected.end() ? 0 : it->second)
            << counter << " (seed " << seed << ")";
    }
    EXPECT_EQ(after.at("datagrams_dropped").get<std::uint64_t>(), sent);

    // States unchanged: the one peer is still up and answering, no new peer,
    // no state change reported, the daemon alive.
    EXPECT_TRUE(daemon_->running());
    const json peers = ctl_json(ctl({"peers"})).at("peers");
    ASSERT_EQ(peers.size(), 1u) << peers.dump();
    EXPECT_EQ(peers[0].at("name"), "oldpeer2");
    EXPECT_EQ(peers[0].at("state"), "up");
    EXPECT_EQ(peers[0].at("address"), "127.0.0.3:5002");
    const int acks = peers[0].at("acks_received").get<int>();
    ASSERT_TRUE(wait_until([&] {
        const auto p = peer_entry("oldpeer2");
        return p && p->at("acks_received").get<int>() >= acks + 2;
    }));
    EXPECT_EQ(state_of("oldpeer2"), "up");
    const std::string log = daemon_log();
    EXPECT_EQ(log.find("is suspect"), std::string::npos) << log;
    EXPECT_EQ(log.find("is down"), std::string::npos) << log;
    EXPECT_EQ(log.find("moved"), std::string::npos) << log;
    const auto probes = client.probes();
    for (std::size_t i = 0; i < probes.size(); ++i) EXPECT_EQ(probes[i].bytes, probe_text(i + 1));
}

// ---- (c) keepalive-peer --legacy against a scripted old ka-server --------------------

class LegacyPeerTest : public ::testing::Test {
protected:
    LegacyPeerTest()
        : registrations_(kOldServerIp, kRegisterPort), probes_(kOldServerIp, kProbePort) {}

    Process& start_peer(const std::string& name, int interval_s, int probes) {
        SpawnOptions options;
        options.stderr_path = dir_.file("peer-" + name + ".log");
        options.stdout_path = options.stderr_path;
        peer_.emplace(Strings{peer_path(), "--legacy", "--server", kOldServerIp, "--bind", kPeerIp,
                              "--name", name, "--interval", std::to_string(interval_s) + "s",
                              "--probes", std::to_string(probes), "--log-target", "stderr"},
                      std::move(options));
        return *peer_;
    }
    std::string peer_log() const { return peer_ ? peer_->stderr_text() : std::string(); }

    Datagram expect_registration(const std::string& text, Millis timeout = kPatience) {
        const auto d = registrations_.receive(timeout);
        if (!d) fail("no registration came\npeer log:\n" + peer_log());
        EXPECT_EQ(d->bytes, text) << shown(d->bytes);
        EXPECT_EQ(d->from_ip, kPeerIp);
        EXPECT_NE(d->from_port, kRegisterPort);
        return *d;
    }

    // Sends `probe` from the old server's IP:5002 and returns the reply.
    Datagram probe(std::string_view probe_bytes) {
        probes_.send_to(kPeerIp, kProbePort, probe_bytes);
        const auto d = probes_.receive(kPatience);
        if (!d) fail("no reply to " + shown(probe_bytes) + "\npeer log:\n" + peer_log());
        EXPECT_EQ(d->from_ip, kPeerIp);
        EXPECT_EQ(d->from_port, kProbePort);
        return *d;
    }

    TempDir dir_;
    Udp registrations_;  // the old server's :5001
    Udp probes_;         // the old server's :5002
    std::optional<Process> peer_;
};

TEST_F(LegacyPeerTest, AnswersLikeTheOldClientAndRegistersAgainWhenTheServerGoesQuiet) {
    start_peer("lp1", 1, 2);
    expect_registration("lp1:1:2");

    // Probes from anywhere but the server's IP:5002 are ignored, like the old
    // client's connected socket would: the first reply is to the real probe.
    Udp wrong_port(kOldServerIp, 0);
    Udp wrong_host("127.0.0.7", kProbePort);
    wrong_port.send_to(kPeerIp, kProbePort, "keepalive:100");
    wrong_host.send_to(kPeerIp, kProbePort, "keepalive:200");
    Clock::time_point last_probe;
    for (std::uint64_t token = 1; token <= 6; ++token) {
        const std::string p = probe_text(token);
        last_probe = Clock::now();
        const Datagram reply = probe(p);
        // The exact bytes of the old client: name, ':', then the 246 bytes after
        // "keepalive:" in a 256-byte buffer.
        std::string expected = "lp1:" + std::to_string(token);
        expected.resize(3 + 1 + 246, '\0');
        EXPECT_EQ(reply.bytes.size(), 250u);
        EXPECT_EQ(reply.bytes, expected) << shown(reply.bytes);
        EXPECT_EQ(reply.bytes, *old_client_reply("lp1", p));
    }
    EXPECT_FALSE(wrong_port.receive(Millis(0)));
    EXPECT_FALSE(wrong_host.receive(Millis(0)));
    EXPECT_FALSE(probes_.receive(Millis(0)));  // no reply to the spoofed probes came later

    // The server goes quiet: after (probes + 1) intervals the peer registers again.
    registrations_.drain();  // repeats sent before the first probe, if the machine was slow
    const Datagram again = expect_registration("lp1:1:2", Millis(3000) + kPatience);
    const double quiet = seconds(again.at - last_probe);
    EXPECT_GE(quiet, 3.0 - 0.05) << "re-registered too early";
    EXPECT_LE(quiet, 3.0 + 3.0) << "re-registered too late";
    ASSERT_TRUE(wait_until([&] { return peer_log().find("went quiet") != std::string::npos; }))
        << peer_log();

    // Still no probe: the registration is repeated, at first every 3 intervals.
    const Datagram third = expect_registration("lp1:1:2", Millis(3000) + kPatience);
    EXPECT_GE(gap(again, third), 3.0 - 0.05);
    EXPECT_LE(gap(again, third), 3.0 + 3.0);

    // A server that comes back (its tokens restart) is answered again.
    const Datagram reply = probe("keepalive:1");
    EXPECT_EQ(reply.bytes, *old_client_reply("lp1", "keepalive:1"));

    // SIGTERM: exits 0 and sends nothing (the old protocol has no goodbye).
    peer_->signal(SIGTERM);
    const auto status = peer_->wait();
    ASSERT_TRUE(status);
    EXPECT_TRUE(status->exited_with(0)) << status->to_string();
    EXPECT_FALSE(probes_.receive(Millis(0)));
}

TEST_F(LegacyPeerTest, RegistrationIsRepeatedWhileTheServerNeverProbes) {
    start_peer("lp2", 1, 3);
    const Datagram first = expect_registration("lp2:1:3");
    const Datagram second = expect_registration("lp2:1:3", Millis(3000) + kPatience);
    const Datagram third = expect_registration("lp2:1:3", Millis(3000) + kPatience);
    for (const double g : {gap(first, second), gap(second, third)}) {
        // max(3 intervals, backoff): the backoff is at most 2 s this early.
        EXPECT_GE(g, 3.0 - 0.05);
        EXPECT_LE(g, 3.0 + 3.0);
    }
    ASSERT_TRUE(wait_until([&] {
        return peer_log().find("no probe from legacy server") != std::string::npos;
    })) << peer_log();
    EXPECT_FALSE(probes_.receive(Millis(0)));  // nothing but registrations
}

TEST(LegacyPeerCommandLine, BadLegacyArgumentsExit2) {
    const std::vector<Strings> cases = {
        {peer_path(), "--legacy", "--server", "::1", "--name", "x"},
        {peer_path(), "--legacy", "--server", "127.0.0.4:5001", "--name", "x"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "a:b"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "x", "--interval", "1500ms"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "x", "--bind", "::1"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "x", "--legacy-ports", "5001"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "x", "--legacy-ports", "1:1"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "x", "--legacy-ports", "0:2"},
        {peer_path(), "--legacy", "--server", "127.0.0.4", "--name", "x", "--legacy-ports",
         "1:70000"},
    };
    for (const auto& argv : cases) {
        std::string line;
        for (const auto& a : argv) line += a + " ";
        const RunResult r = run(argv);
        EXPECT_TRUE(r.status.exited_with(2)) << line << ": " << r.status.to_string() << "\n"
                                             << r.err;
        EXPECT_NE(r.err.find("Usage:"), std::string::npos) << line << ": " << r.err;
    }
}

// ---- (d) keepalive-peer --legacy against keepalived -----------------------------------

TEST_F(LegacyDaemonTest, LegacyPeerAgentComesUpAndIsDownAfterSigkill) {
    start_daemon();
    const Strings argv{peer_path(),     "--legacy", "--server",     kServerIp,    "--bind",
                       kPeerToDaemonIp, "--name",   "agent1",       "--interval", "1s",
                       "--probes",      "3",        "--log-target", "stderr"};
    SpawnOptions options;
    options.stderr_path = dir_.file("agent1.log");
    std::optional<Process> agent;
    agent.emplace(argv, options);
    wait_for_state("agent1", "up");
    const auto entry = ctl_peer("agent1");
    ASSERT_TRUE(entry);
    EXPECT_EQ(entry->at("protocol"), "legacy");
    EXPECT_EQ(entry->at("address"), "127.0.0.6:5002");
    ASSERT_TRUE(wait_until([&] {
        const auto p = peer_entry("agent1");
        return p && p->at("acks_received").get<int>() >= 3;
    })) << daemon_log();
    EXPECT_EQ(state_of("agent1"), "up");
    EXPECT_NE(agent->stderr_text().find("is probing agent1"), std::string::npos)
        << agent->stderr_text();

    const auto killed = Clock::now();
    agent->kill();
    expect_down_on_time("agent1", killed, std::chrono::seconds(3), std::chrono::seconds(1));

    // A new agent process registers again from the same IP and is up at once.
    options.stderr_path = dir_.file("agent1-again.log");
    agent.emplace(argv, options);
    wait_for_state("agent1", "up");
    EXPECT_EQ(ctl_json(ctl({"peers"})).at("peers").size(), 1u);
    // Reported as up again after the down (by the registration, or by a slow
    // probe that the new process answered just before it).
    ASSERT_TRUE(wait_until([&] {
        const std::string log = daemon_log();
        const auto down = log.find("peer agent1 (127.0.0.6:5002) is down: detection time expired");
        return down != std::string::npos &&
               log.find("peer agent1 (127.0.0.6:5002) is up: ", down) != std::string::npos;
    })) << daemon_log();
}

TEST_F(LegacyDaemonTest, OtherPortsOnBothSides) {
    // [legacy] register_port / probe_port and --legacy-ports, for setups where
    // 5001/5002 cannot be used; the probe port is the same on both sides.
    register_port_ = free_udp_port();
    probe_port_ = free_udp_port();
    start_daemon();
    const std::string ports = std::to_string(register_port_) + ":" + std::to_string(probe_port_);
    SpawnOptions options;
    options.stderr_path = dir_.file("agent2.log");
    Process agent({peer_path(), "--legacy", "--legacy-ports", ports, "--server", kServerIp,
                   "--bind", kPeerToDaemonIp, "--name", "agent2", "--interval", "1s", "--probes",
                   "2", "--log-target", "stderr"},
                  options);
    wait_for_state("agent2", "up");
    const auto entry = ctl_peer("agent2");
    ASSERT_TRUE(entry);
    EXPECT_EQ(entry->at("protocol"), "legacy");
    EXPECT_EQ(entry->at("address"),
              std::string(kPeerToDaemonIp) + ":" + std::to_string(probe_port_));
    ASSERT_TRUE(wait_until([&] {
        const auto p = peer_entry("agent2");
        return p && p->at("acks_received").get<int>() >= 2;
    })) << daemon_log()
        << agent.stderr_text();
    EXPECT_EQ(state_of("agent2"), "up");
}

TEST_F(LegacyDaemonTest, JournalEntriesAreMarkedLegacy) {
    Journald journald;
    if (!journald.available())
        GTEST_SKIP() << "journald unavailable: " << journald.why_unavailable();
    start_daemon("journal");
    const std::string name = "jl" + unique_token();  // unique across runs in a kept journal
    OldClient client(name, kOldClientIp, kServerIp);
    client.register_now(1, 1);
    wait_for_state(name, "up");
    ASSERT_TRUE(wait_until([&] { return client.answered() >= 2; }));
    client.set_answering(false);
    wait_for_state(name, "down");

    for (const std::string event : {"registered", "down"}) {
        std::vector<json> found;
        ASSERT_TRUE(wait_until(
            [&] {
                found = journald.entries({"PEER_NAME=" + name, "PEER_EVENT=" + event});
                return !found.empty();
            },
            kPatience, 100ms))
            << "no journal entry for " << name << " " << event;
        ASSERT_EQ(found.size(), 1u);
        EXPECT_EQ(found[0].at("PEER_PROTOCOL"), "legacy");
        EXPECT_EQ(found[0].at("PEER_ADDRESS"), "127.0.0.3:5002");
        EXPECT_EQ(found[0].at("PEER_INTERVAL_MSEC"), "1000");
    }
}

}  // namespace
}  // namespace keepalive::test
