// Attacks on a running keepalived with authentication required: forged ACK and
// BYE, key rotation under load, and every kind of bad datagram against healthy
// peers. The daemon and the healthy peers are the real binaries; the attacker
// and one hand-driven peer are sockets in this process.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "core/codec.hpp"
#include "harness.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Bytes = std::vector<std::uint8_t>;
using Strings = std::vector<std::string>;

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

std::string hex_key(char digit) {
    return std::string(64, digit);
}
kap::AuthKey key(std::uint32_t id, char digit) {
    const int v = digit >= 'a' ? digit - 'a' + 10 : digit - '0';
    return {id, Bytes(32, static_cast<std::uint8_t>(v << 4 | v))};
}

std::string fmt_session(std::uint32_t s) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", s);
    return buf;
}

// A UDP socket on 127.0.0.1 talking to one server address.
class Socket {
public:
    explicit Socket(const Address& server) : server_(server) {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd_ < 0) fail("socket failed");
        const Address local = Address::v4(0x7f000001, 0);
        sockaddr_storage ss{};
        const socklen_t len = local.to_sockaddr(ss);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0) fail("bind failed");
    }
    ~Socket() { ::close(fd_); }
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    void send(const Bytes& d) {
        sockaddr_storage ss{};
        const socklen_t len = server_.to_sockaddr(ss);
        if (::sendto(fd_, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&ss), len) < 0)
            fail(std::string("sendto: ") + std::strerror(errno));
    }
    std::optional<Bytes> receive(Millis timeout = 0ms) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
        Bytes buf(2048);
        const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
        if (n < 0) return std::nullopt;
        buf.resize(static_cast<std::size_t>(n));
        return buf;
    }

private:
    Address server_;
    int fd_ = -1;
};

Bytes encode(const kap::Message& m, const kap::AuthKey* key) {
    Bytes out(kap::kMaxDatagramSize);
    out.resize(kap::encode(m, out, key));
    if (out.empty()) fail("unencodable message");
    return out;
}

// A KAP/1 peer driven by the test, so that the test knows its incarnation and
// keeps the ACKs it sent (to replay them) and can stop answering at will.
class HandPeer {
public:
    HandPeer(const Address& server, std::string name, const kap::KeyRing* keys,
             std::uint32_t interval_ms, std::uint8_t probes)
        : socket_(server), name_(std::move(name)), keys_(keys) {
        std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(name_));
        incarnation_ = rng();
        kap::Register r{rng(), incarnation_, interval_ms, probes, {}, name_};
        socket_.send(encode({.session = 0, .body = r}, sign_key()));
        const auto challenge = next_of(kap::Type::challenge);
        r.cookie = std::get<kap::Challenge>(challenge.body).cookie;
        cookie_register_ = encode({.session = 0, .body = r}, sign_key());
        socket_.send(cookie_register_);
        const auto accept = next_of(kap::Type::accept);
        session_ = accept.session;
    }

    // Answers every PROBE waiting now (if answering); returns how many came.
    int pump() {
        int n = 0;
        while (auto d = socket_.receive()) {
            auto m = kap::decode(*d, keys_, keys_ != nullptr);
            if (!m || kap::type_of(*m) != kap::Type::probe) continue;
            ++n;
            const auto& p = std::get<kap::Probe>(m->body);
            highest_seq_ = std::max(highest_seq_, p.seq);
            last_probe_ = p;
            if (!answering) continue;
            acks_.push_back(
                encode({.session = session_, .body = kap::Ack{p.seq, p.tx_time, incarnation_}},
                       sign_key()));
            socket_.send(acks_.back());
        }
        return n;
    }
    // Waits until `n` more PROBEs have come (answering them if answering).
    void wait_probes(int n) {
        int seen = 0;
        if (!wait_until([&] { return (seen += pump()) >= n; }, kPatience, 5ms))
            fail("no probes for " + name_);
    }

    std::uint32_t session() const { return session_; }
    std::uint64_t incarnation() const { return incarnation_; }
    std::uint64_t highest_seq() const { return highest_seq_; }
    const kap::Probe& last_probe() const { return last_probe_; }
    const std::vector<Bytes>& acks() const { return acks_; }
    Socket& socket() { return socket_; }
    bool answering = true;

private:
    const kap::AuthKey* sign_key() const { return keys_ ? keys_->active() : nullptr; }
    kap::Message next_of(kap::Type type) {
        for (const auto end = Clock::now() + kPatience; Clock::now() < end;) {
            auto d = socket_.receive(100ms);
            if (!d) continue;
            auto m = kap::decode(*d, keys_, keys_ != nullptr);
            if (m && kap::type_of(*m) == type) return *m;
        }
        fail("no " + std::string(kap::to_string(type)) + " for " + name_);
    }

    Socket socket_;
    std::string name_;
    const kap::KeyRing* keys_;
    std::uint64_t incarnation_ = 0;
    std::uint32_t session_ = 0;
    std::uint64_t highest_seq_ = 0;
    kap::Probe last_probe_;
    Bytes cookie_register_;
    std::vector<Bytes> acks_;
};

class AuthTest : public ::testing::Test {
protected:
    AuthTest() {
        port_ = free_udp_port();
        config_.listen.push_back(address());
        config_.control_socket = dir_.file("control.sock");
        ring_.add(key(1, 'a'));
    }

    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    Address server() const { return *Address::parse(address()); }
    std::string keys_path() const { return dir_.file("keys"); }

    void write_keys(const std::string& path, const std::string& text) {
        write_file(path, text);
        if (::chmod(path.c_str(), 0600) != 0) fail("chmod failed");
    }
    void write_config(bool auth, const std::string& active = "") {
        std::string text = config_.to_toml();
        if (auth) {
            text += "\n[auth]\nmode = \"required\"\nkeys_file = \"" + keys_path() + "\"\n";
            if (!active.empty()) text += "active = " + active + "\n";
        }
        write_file(dir_.file("keepalived.toml"), text);
    }

    void start_daemon(bool auth) {
        if (auth) write_keys(keys_path(), "1 " + hex_key('a') + "\n");
        write_config(auth);
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived.log");
        daemon_.emplace(Strings{keepalived_path(), "--config", dir_.file("keepalived.toml"),
                                "--log-target", "stderr"},
                        options);
        if (!wait_until([&] { return !daemon_->running() || status_or_null() != nullptr; }) ||
            !daemon_->running())
            fail("keepalived did not come up:\n" + daemon_->stderr_text());
    }
    json status_or_null() {
        try {
            return control_request(config_.control_socket, "status");
        } catch (const std::exception&) {
            return nullptr;
        }
    }
    json status() { return control_request(config_.control_socket, "status"); }
    std::map<std::string, json> peers() {
        std::map<std::string, json> out;
        const json reply = control_request(config_.control_socket, "peers");
        for (const auto& p : reply.at("peers")) out[p.at("name").get<std::string>()] = p;
        return out;
    }
    std::string state_of(const std::string& name) {
        const auto all = peers();
        const auto it = all.find(name);
        return it == all.end() ? "absent" : it->second.at("state").get<std::string>();
    }
    std::uint64_t drops(const std::string& reason) {
        return status().at("drops").at(reason).get<std::uint64_t>();
    }

    Process& start_peer(const std::string& name, const std::string& keys,
                        const std::string& interval = "200ms", const std::string& probes = "5") {
        Strings argv{peer_path(), "--server", address(), "--name",       name,    "--interval",
                     interval,    "--probes", probes,    "--log-target", "stderr"};
        if (!keys.empty()) argv.insert(argv.end(), {"--keys-file", keys});
        SpawnOptions options;
        options.stderr_path = dir_.file("peer-" + name + ".log");
        return peers_.try_emplace(name, std::move(argv), std::move(options)).first->second;
    }
    void wait_up(const Strings& names) {
        const bool up = wait_until([&] {
            const auto all = peers();
            return std::all_of(names.begin(), names.end(), [&](const std::string& n) {
                return all.count(n) && all.at(n).at("state") == "up";
            });
        });
        if (!up) fail("peers not up: " + json(peers()).dump() + "\n" + daemon_->stderr_text());
    }
    // Log lines of the daemon reporting a state change of `name` after registering.
    std::vector<std::string> state_changes(const std::string& name) {
        std::vector<std::string> out;
        const std::string log = daemon_->stderr_text();
        std::size_t start = 0;
        for (std::size_t end; (end = log.find('\n', start)) != std::string::npos; start = end + 1) {
            const std::string line = log.substr(start, end - start);
            if (line.find("peer " + name + " (") != std::string::npos &&
                line.find(") registered") == std::string::npos)
                out.push_back(line);
        }
        return out;
    }

    TempDir dir_;
    std::uint16_t port_ = 0;
    DaemonConfig config_;
    kap::KeyRing ring_;
    std::optional<Process> daemon_;
    std::map<std::string, Process> peers_;
};

// A peer that died, and an attacker who sees its PROBEs (so knows session, seq,
// tx_time and incarnation) answering in its place from its very address. With
// authentication the forgeries are dropped and the peer goes down on time; a
// forged BYE does not make it "left". Without, the same forgery keeps a dead
// peer "up": the reason authentication exists.
TEST_F(AuthTest, ForgedAckAndByeMoveNothingWithAuthButFoolTheServerWithout) {
    for (const bool auth : {true, false}) {
        SCOPED_TRACE(auth ? "auth required" : "auth off");
        port_ = free_udp_port();
        config_.listen = {address()};
        start_daemon(auth);
        HandPeer victim(server(), "victim", auth ? &ring_ : nullptr, 100, 3);
        victim.wait_probes(3);
        ASSERT_EQ(state_of("victim"), "up");

        const auto acks_before = peers().at("victim").at("acks_received").get<int>();
        victim.answering = false;  // dead; the attacker takes over its socket
        kap::KeyRing wrong;
        wrong.add(key(1, 'f'));  // the right key id, the wrong secret
        const std::uint64_t unauthenticated = drops("unauthenticated");
        int forgeries = 0;
        const auto start = Clock::now();
        while (Clock::now() - start < 1500ms) {
            if (victim.pump() == 0) {
                std::this_thread::sleep_for(5ms);  // pacing only
                continue;
            }
            const kap::Probe p = victim.last_probe();
            victim.socket().send(encode({.session = victim.session(),
                                         .body = kap::Ack{p.seq, p.tx_time, victim.incarnation()}},
                                        auth ? wrong.active() : nullptr));
            ++forgeries;
        }
        ASSERT_GE(forgeries, 5);
        EXPECT_EQ(state_of("victim"), auth ? "down" : "up");
        victim.socket().send(encode({.diag = kap::Diag::shutting_down,
                                     .session = victim.session(),
                                     .body = kap::Bye{victim.highest_seq()}},
                                    auth ? wrong.active() : nullptr));
        if (auth) {
            ASSERT_TRUE(wait_until(
                [&] { return drops("unauthenticated") >= unauthenticated + forgeries + 1; }));
            EXPECT_EQ(state_of("victim"), "down");
            std::cout << "auth required: " << forgeries
                      << " forged ACKs and a forged BYE dropped as unauthenticated; the dead peer "
                         "went down on time"
                      << std::endl;
        } else {
            ASSERT_TRUE(wait_until([&] { return state_of("victim") == "left"; }));
            EXPECT_EQ(peers().at("victim").at("acks_received").get<int>(), acks_before + forgeries);
            std::cout << "auth off: " << forgeries
                      << " forged ACKs kept a dead peer up, and a forged BYE made it 'left'"
                      << std::endl;
        }
        daemon_->signal(SIGTERM);
        ASSERT_TRUE(daemon_->wait());
    }
}

// Rotation: add key 2 everywhere, switch the daemon to send with it, switch the
// peers, retire key 1, with peers probed every 100 ms throughout: no session
// is lost, no peer is ever suspect, and nothing is dropped as unauthenticated.
TEST_F(AuthTest, KeyRotationUnderLoadDropsNoSession) {
    start_daemon(true);
    const std::string peer_keys = dir_.file("peer-keys");
    write_keys(peer_keys, "1 " + hex_key('a') + "\n");
    Strings names;
    for (int i = 0; i < 8; ++i) {
        names.push_back("rot-" + std::to_string(i));
        start_peer(names.back(), peer_keys, "100ms", "5");
    }
    wait_up(names);
    const auto before = peers();

    std::size_t reloads = 0;
    const auto hup_daemon = [&] {
        daemon_->signal(SIGHUP);
        ++reloads;
        const bool done = wait_until([&] {
            const std::string log = daemon_->stderr_text();
            std::size_t n = 0;
            for (auto p = log.find("configuration reloaded"); p != std::string::npos;
                 p = log.find("configuration reloaded", p + 1))
                ++n;
            return n >= reloads;
        });
        if (!done)
            fail("reload " + std::to_string(reloads) + " not seen:\n" + daemon_->stderr_text());
    };
    std::size_t peer_reloads = 0;
    const auto hup_peers = [&] {
        ++peer_reloads;
        for (auto& [n, p] : peers_) p.signal(SIGHUP);
        for (auto& [n, p] : peers_) {
            const bool done = wait_until([&] {
                const std::string log = p.stderr_text();
                std::size_t k = 0;
                for (auto q = log.find("keys re-read"); q != std::string::npos;
                     q = log.find("keys re-read", q + 1))
                    ++k;
                return k >= peer_reloads;
            });
            if (!done) fail("peer " + n + " did not re-read its keys:\n" + p.stderr_text());
        }
    };
    // Each step lasts until every peer has been probed and has answered 5 more times.
    const auto let_probes_run = [&] {
        const auto at_start = peers();
        ASSERT_TRUE(wait_until([&] {
            const auto now = peers();
            return std::all_of(names.begin(), names.end(), [&](const std::string& n) {
                return now.at(n).at("acks_received").get<std::uint64_t>() >=
                       at_start.at(n).at("acks_received").get<std::uint64_t>() + 5;
            });
        })) << json(peers()).dump();
    };

    const std::string both = "1 " + hex_key('a') + "\n2 " + hex_key('b') + "\n";
    write_keys(keys_path(), both);  // 1. everyone learns key 2, still sending with key 1
    write_keys(peer_keys, both);
    hup_daemon();
    hup_peers();
    let_probes_run();
    write_config(true, "2");  // 2. the daemon sends with key 2
    hup_daemon();
    EXPECT_EQ(status().at("daemon").at("auth").at("active_key"), 2);
    let_probes_run();
    write_keys(peer_keys, "2 " + hex_key('b') + "\n1 " + hex_key('a') + "\n");  // 3. peers too
    hup_peers();
    let_probes_run();
    write_keys(keys_path(), "2 " + hex_key('b') + "\n");  // 4. key 1 retired
    write_config(true);
    hup_daemon();
    let_probes_run();

    const auto after = peers();
    for (const auto& n : names) {
        EXPECT_EQ(after.at(n).at("state"), "up");
        EXPECT_EQ(after.at(n).at("session"), before.at(n).at("session")) << n;
        EXPECT_EQ(state_changes(n), Strings{}) << n;
        EXPECT_EQ(peers_.at(n).stderr_text().find("lost"), std::string::npos)
            << peers_.at(n).stderr_text();
    }
    EXPECT_EQ(drops("unauthenticated"), 0u) << status().dump();
    EXPECT_EQ(status().at("daemon").at("auth").at("keys"), 1);

    // A reload that would break auth (a key file open to others) keeps the old keys.
    ::chmod(keys_path().c_str(), 0644);
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_until(
        [&] { return daemon_->stderr_text().find("reload failed") != std::string::npos; }));
    EXPECT_NE(daemon_->stderr_text().find("accessible by group or others"), std::string::npos);
    let_probes_run();
    EXPECT_EQ(status().at("daemon").at("auth").at("mode"), "required");
}

// Every kind of bad datagram the contract names, plus what only authentication
// and the replay rules catch, against a daemon with healthy peers: each is
// dropped and counted under its reason (and nothing else is counted), no
// answer is larger than what provoked it, and no peer's state moves.
TEST_F(AuthTest, EveryBadDatagramIsDroppedAndCountedUnderItsReason) {
    start_daemon(true);
    const std::string peer_keys = dir_.file("peer-keys");
    write_keys(peer_keys, "1 " + hex_key('a') + "\n");
    const Strings names = {"healthy-1", "healthy-2", "healthy-3"};
    for (const auto& n : names) start_peer(n, peer_keys);
    wait_up(names);
    const auto before = peers();

    // The insider holds the key and is probed slowly; its datagrams are replayed.
    HandPeer insider(server(), "insider", &ring_, 500, 255);
    insider.wait_probes(1);
    const kap::AuthKey* k = ring_.active();
    const Bytes first_ack = insider.acks().front();
    const Bytes old_bye = encode({.diag = kap::Diag::shutting_down,
                                  .session = insider.session(),
                                  .body = kap::Bye{insider.highest_seq()}},
                                 k);
    insider.wait_probes(2);  // the server has now seen ACKs above that BYE's seq
    ASSERT_EQ(state_of("insider"), "up");

    const auto with_header = [](Bytes d, std::size_t at, std::uint8_t v) {
        d[at] = v;
        return d;
    };
    const Bytes ack = insider.acks().back();
    Bytes bad_mac = ack;
    bad_mac.back() ^= 0x01;
    Bytes short_ack = encode({.session = insider.session(), .body = kap::Ack{1, 2, 3}}, nullptr);
    short_ack.resize(30);
    short_ack[7] = 30;
    const kap::AuthKey unknown_id = key(77, 'a');  // the right secret under an id not held
    kap::Register stale_reg{1, 2, 100, 3, {}, "intruder"};
    stale_reg.cookie.fill(0x5a);

    struct Case {
        const char* what;
        const char* reason;
        Bytes datagram;
        bool from_elsewhere = false;
    };
    const std::vector<Case> cases = {
        {"shorter than the header", "too_short", Bytes{0x4b, 0x41, 1, 6, 0}},
        {"wrong magic", "bad_magic", with_header(ack, 0, 'X')},
        {"wrong version", "bad_version", with_header(ack, 2, 2)},
        {"wrong length", "bad_length", with_header(ack, 7, static_cast<std::uint8_t>(ack[7] - 1))},
        {"unknown flag", "bad_flags", with_header(ack, 4, 0x03)},
        {"unknown type", "bad_type", with_header(ack, 3, 9)},
        {"body of the wrong size", "bad_size", short_ack},
        {"no trailer", "unauthenticated",
         encode({.session = insider.session(),
                 .body = kap::Ack{insider.highest_seq(), 0, insider.incarnation()}},
                nullptr)},
        {"bad MAC", "unauthenticated", bad_mac},
        {"unknown key id", "unauthenticated",
         encode({.session = insider.session(), .body = kap::Ack{1, 0, 0}}, &unknown_id)},
        {"server-to-peer type", "wrong_direction",
         encode({.session = insider.session(), .body = kap::Probe{1, 2}}, k)},
        {"replayed ACK", "stale_ack", first_ack},
        {"replayed BYE", "stale_bye", old_bye},
        {"stale cookie", "stale_cookie", encode({.session = 0, .body = stale_reg}, k)},
        {"foreign source", "wrong_source", ack, true},
        {"BYE diag 7 to the server", "bad_diag",
         encode({.diag = kap::Diag::unknown_session,
                 .session = insider.session(),
                 .body = kap::Bye{0}},
                k)},
        {"unknown session", "unknown_session",
         encode({.session = insider.session() ^ 0x5555, .body = kap::Ack{1, 0, 0}}, k)},
    };

    Socket elsewhere(server());
    constexpr int kEach = 3;
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        const json s0 = status();
        Socket& from = c.from_elsewhere ? elsewhere : insider.socket();
        for (int i = 0; i < kEach; ++i) from.send(c.datagram);
        ASSERT_TRUE(wait_until([&] {
            return status().at("datagrams_received").get<std::uint64_t>() >=
                   s0.at("datagrams_received").get<std::uint64_t>() + kEach;
        }));
        // Replies: whatever the attacker's socket got, other than PROBEs of the insider.
        std::vector<Bytes> replies;
        // The daemon sends its answers before it serves the status request above.
        while (auto d = from.receive()) {
            const auto m = kap::decode(*d, &ring_, true);
            if (m && kap::type_of(*m) == kap::Type::probe) continue;
            replies.push_back(*d);
        }
        insider.pump();
        const json s1 = status();
        EXPECT_EQ(s1.at("drops").at(c.reason).get<std::uint64_t>() -
                      s0.at("drops").at(c.reason).get<std::uint64_t>(),
                  static_cast<std::uint64_t>(kEach));
        EXPECT_EQ(s1.at("datagrams_dropped").get<std::uint64_t>() -
                      s0.at("datagrams_dropped").get<std::uint64_t>(),
                  static_cast<std::uint64_t>(kEach))
            << "counted under other reasons too: " << s1.at("drops").dump();
        for (const Bytes& r : replies) EXPECT_LE(r.size(), c.datagram.size());
        std::cout << c.what << ": " << kEach << " x " << c.datagram.size() << " bytes -> "
                  << c.reason << ", " << replies.size() << " replies" << std::endl;
    }

    const auto after = peers();
    for (const auto& n : names) {
        EXPECT_EQ(after.at(n).at("state"), "up");
        EXPECT_EQ(after.at(n).at("session"), before.at(n).at("session"));
        EXPECT_EQ(state_changes(n), Strings{}) << n;
    }
    EXPECT_EQ(after.at("insider").at("session"), json(fmt_session(insider.session())));
    EXPECT_NE(after.at("insider").at("state"), "left");
    EXPECT_NE(after.at("insider").at("state"), "down");
    EXPECT_EQ(after.count("intruder"), 0u);
}

// keepalive-peer fails closed too: a keys file it cannot use stops it with
// exit status 1 and the file (and line and column) of the problem.
TEST(PeerKeys, UnusableKeysFileStopsThePeer) {
    TempDir dir;
    const std::string keys = dir.file("keys");
    const auto peer = [&](const std::string& path) {
        return run({peer_path(), "--server", "127.0.0.1:9", "--name", "p", "--keys-file", path,
                    "--log-target", "stderr"});
    };
    RunResult r = peer(dir.file("absent"));
    EXPECT_TRUE(r.status.exited_with(1)) << r.status.to_string();
    EXPECT_NE(r.err.find(dir.file("absent") + ": cannot open the keys file"), std::string::npos)
        << r.err;

    write_file(keys, "# comment\n1 " + hex_key('a') + "\n2 nothex\n");
    ASSERT_EQ(::chmod(keys.c_str(), 0600), 0);
    r = peer(keys);
    EXPECT_TRUE(r.status.exited_with(1)) << r.status.to_string();
    EXPECT_NE(r.err.find(keys + ":3:3: key 2: not a hex digit"), std::string::npos) << r.err;

    write_file(keys, "1 " + hex_key('a') + "\n");
    ASSERT_EQ(::chmod(keys.c_str(), 0640), 0);
    r = peer(keys);
    EXPECT_TRUE(r.status.exited_with(1)) << r.status.to_string();
    EXPECT_NE(r.err.find("accessible by group or others"), std::string::npos) << r.err;

    write_file(keys, "");
    ASSERT_EQ(::chmod(keys.c_str(), 0600), 0);
    r = peer(keys);
    EXPECT_TRUE(r.status.exited_with(1)) << r.status.to_string();
    EXPECT_NE(r.err.find(keys + ":1:1: holds no key"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace keepalive::test
