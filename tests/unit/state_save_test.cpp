// The periodic save of the peer table, streamed: an in-process daemon under a
// fake clock, stepped one loop iteration at a time, with a real state file.
// A save of many peers takes many iterations of bounded size, leaves the
// previous file whole until its last step, copes with peers that come and go
// meanwhile, and loads back; a crash mid-save keeps the old file, and a stop
// mid-save writes the table whole.
#include <fmt/format.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>

#include "core/peer_snapshot.hpp"
#include "daemon/config.hpp"
#include "daemon/daemon.hpp"
#include "daemon/state_store.hpp"
#include "test_support.hpp"

namespace keepalive::test_support {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// Far more loop iterations than any save below needs: running out of them is
// a save that never ends, never a slow machine.
constexpr int kMaxSteps = 20'000;
// What one record can take in the file: its fixed part and a 64-byte name.
constexpr std::size_t kMaxRecordBytes = 4 + 4 + 8 + 3 * 23 + 7 * 8 + 64;
constexpr std::size_t kHeaderBytes = 8 + 4 + 8 + 8 + 16 + 8;

std::vector<std::uint8_t> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
}

UniqueFd loopback_socket(std::uint16_t port = 0) {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0)
        throw std::runtime_error("bind");
    return fd;
}

std::uint16_t port_of(const UniqueFd& fd) {
    sockaddr_in sin{};
    socklen_t len = sizeof sin;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sin), &len);
    return ntohs(sin.sin_port);
}

class StateSaveTest : public ::testing::Test {
protected:
    FakeClock clock{Clock::now()};
    SeededRandom random{test_seed()};
    Logger log{LogTarget::stderr_};
    std::string dir, state, tmp;
    // Where the saved peers' probes go: a loopback socket nobody reads.
    UniqueFd sink = loopback_socket();
    std::uint16_t port = 0;  // the daemon's
    std::unique_ptr<Daemon> daemon;

    void SetUp() override {
        char dir_template[] = "/tmp/keepalived-state-save-XXXXXX";
        if (::mkdtemp(dir_template) == nullptr) throw std::runtime_error("mkdtemp");
        dir = dir_template;
        state = dir + "/state";
        tmp = state + ".tmp";
        // A free port for the daemon: bound here and released just before it binds.
        port = port_of(loopback_socket());
    }
    void TearDown() override {
        daemon.reset();
        std::error_code ec;
        fs::remove_all(dir, ec);
    }

    // The saved table a previous process left: `up` peers up, then `left`
    // peers that left long enough ago to be forgotten `forgotten_in` after start.
    // (`steady`: the state of the first ones; left peers are never probed.)
    void seed(std::size_t up, std::size_t left = 0, Duration forgotten_in = 2500ms,
              PeerState steady = PeerState::up) {
        ServerSnapshot s;
        s.epoch = 42;
        const SaveStamp now = save_stamp_now();
        s.saved_realtime_ns = now.realtime_ns;
        s.saved_boottime_ns = now.boottime_ns;
        s.boot_id = now.boot_id;
        const Address listener = addr(fmt::format("127.0.0.1:{}", port).c_str());
        const Address sink_address = addr(fmt::format("127.0.0.1:{}", port_of(sink)).c_str());
        const auto record = [&](std::string name, PeerState in, Duration age) {
            s.peers.push_back({.name = std::move(name),
                               .state = in,
                               .probes = 3,
                               .session = static_cast<std::uint32_t>(s.peers.size() + 1),
                               .incarnation = 1,
                               .address = sink_address,
                               .listener = listener,
                               .route_local = listener,
                               .interval = 10s,
                               .state_age = age,
                               .seq_sent = 5,
                               .seq_acked = 5,
                               .probes_sent = 5,
                               .acks_received = 5,
                               .rtt = std::nullopt});
        };
        for (std::size_t i = 0; i < up; ++i) record(fmt::format("p-{}", i), steady, 1s);
        for (std::size_t i = 0; i < left; ++i)
            record(fmt::format("gone-{}", i), PeerState::left, 10min - forgotten_in);
        write_file(state, encode_snapshot(s));
    }

    void start() {
        std::ofstream(dir + "/keepalived.toml") << fmt::format(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_socket = \"{}/control\"\n"
            "state_file = \"{}\"\n[peers]\nforget_after = \"10m\"\nmax_peers = 200000\n"
            "max_per_host = 200000\n",
            port, dir, state);
        auto config = load_config(dir + "/keepalived.toml");
        ASSERT_TRUE(config) << config.error().to_string();
        daemon = std::make_unique<Daemon>(std::move(*config), log, clock, random);
        daemon->start();
    }

    void step() { daemon->run_once(Duration::zero()); }
    nlohmann::json save_status() const { return daemon->status()["daemon"]["state"]; }
    bool saving() const { return save_status()["saving"].get<bool>(); }
    std::uint64_t saves() const { return save_status()["saves"].get<std::uint64_t>(); }

    // Past the first save's delay, until that save has begun.
    void begin_save() {
        clock.advance(2s + 1ms);
        for (int i = 0; i < 10 && !saving(); ++i) step();
        ASSERT_TRUE(saving());
    }
    // Steps until the save in progress is over; returns the steps it took.
    int finish_save() {
        int steps = 0;
        while (saving() && steps < kMaxSteps) {
            clock.advance(1ms);  // the end (fsync, rename) is checked every few ms
            step();
            ++steps;
        }
        EXPECT_FALSE(saving());
        return steps;
    }
    // A KAP/1 agent played by the test on `fd`, registering in two halves:
    // REGISTER, answered with a CHALLENGE (its cookie stays valid for 60 s),
    // then the REGISTER with that cookie, answered with ACCEPT. The daemon is
    // stepped meanwhile (and its save with it).
    void send_to_daemon(const UniqueFd& fd, const kap::Message& m) {
        const Bytes bytes = encode(m);
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(::sendto(fd.get(), bytes.data(), bytes.size(), 0,
                           reinterpret_cast<const sockaddr*>(&to), sizeof to),
                  static_cast<ssize_t>(bytes.size()));
    }
    std::optional<kap::Message> await(const UniqueFd& fd) {
        for (int i = 0; i < 1000; ++i) {
            std::uint8_t buf[2048];
            const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
            if (n > 0)
                if (auto m = kap::decode(
                        std::span<const std::uint8_t>(buf, static_cast<std::size_t>(n))))
                    return *m;
            // From 1 000 peers on, the daemon reads on its wheel's grid.
            clock.advance(1ms);
            step();
        }
        return std::nullopt;
    }
    kap::Register challenged(const UniqueFd& fd, const std::string& name) {
        kap::Register r{7, 0x5eed, 10'000, 3, {}, name};
        send_to_daemon(fd, {.body = r});
        const auto challenge = await(fd);
        EXPECT_TRUE(challenge && kap::type_of(*challenge) == kap::Type::challenge);
        if (challenge && kap::type_of(*challenge) == kap::Type::challenge)
            r.cookie = std::get<kap::Challenge>(challenge->body).cookie;
        return r;
    }
    void accepted(const UniqueFd& fd, const kap::Register& r) {
        send_to_daemon(fd, {.body = r});
        const auto accept = await(fd);
        ASSERT_TRUE(accept.has_value());
        ASSERT_EQ(kap::type_of(*accept), kap::Type::accept);
    }

    ServerSnapshot saved() const {
        auto s = decode_snapshot(read_file(state));
        EXPECT_TRUE(s) << s.error();
        return s ? *s : ServerSnapshot{};
    }
};

std::map<std::string, PeerRecord> by_name(const ServerSnapshot& s) {
    std::map<std::string, PeerRecord> out;
    for (const PeerRecord& r : s.peers) out.emplace(r.name, r);
    return out;
}

TEST_F(StateSaveTest, ManyPeersAreSavedOverManyBoundedStepsAndLoadBack) {
    constexpr std::size_t kPeers = 20'000;
    seed(kPeers);
    const auto before = read_file(state);
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(daemon->status()["peers"], kPeers);
    ASSERT_NO_FATAL_FAILURE(begin_save());

    int steps = 0;
    std::uintmax_t written = 0;
    while (saving() && steps < kMaxSteps) {
        // The saved copy is always whole: the previous one until the new one
        // is (its rename runs on a helper thread, between two steps).
        const auto now_saved = read_file(state);
        ASSERT_TRUE(now_saved == before ||
                    (saving() && save_status()["saves"] == 0 && decode_snapshot(now_saved)))
            << "step " << steps;
        clock.advance(1ms);  // the end (fsync, rename) is checked every few ms
        step();
        ++steps;
        std::error_code ec;
        const std::uintmax_t now_written = fs::exists(tmp) ? fs::file_size(tmp, ec) : written;
        // Each step writes one bounded piece (the header with the first one).
        EXPECT_LE(now_written - written, kHeaderBytes + Daemon::kSavePeersPerStep * kMaxRecordBytes)
            << "step " << steps;
        written = now_written;
    }
    EXPECT_GE(steps, static_cast<int>(kPeers / Daemon::kSavePeersPerStep));
    EXPECT_FALSE(fs::exists(tmp));

    const auto bytes = read_file(state);
    EXPECT_NE(bytes, before);
    EXPECT_EQ(bytes[11], ServerSnapshot::kStreamedVersion);
    const ServerSnapshot s = saved();
    EXPECT_EQ(s.epoch, 42u);
    const auto names = by_name(s);
    ASSERT_EQ(s.peers.size(), kPeers);
    ASSERT_EQ(names.size(), kPeers);
    for (std::size_t i = 0; i < kPeers; i += 997)
        EXPECT_TRUE(names.contains(fmt::format("p-{}", i)));
    const auto status = save_status();
    EXPECT_EQ(status["last_save_peers"], kPeers);
    EXPECT_GE(status["last_save_steps"].get<int>(),
              static_cast<int>(kPeers / Daemon::kSavePeersPerStep));

    // The next process takes every peer over from it.
    daemon.reset();
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(daemon->status()["peers"], kPeers);
    EXPECT_EQ(daemon->status()["up"], kPeers);
}

// Peers forgotten and registered while a save is in progress: those
// forgotten before the save reached them are not in it, the others are in it
// once, no name is in it twice as alive, and the save that fell due meanwhile
// follows and holds the newcomers.
TEST_F(StateSaveTest, PeersThatComeAndGoMidSaveAreHandled) {
    constexpr std::size_t kUp = 32 * Daemon::kSavePeersPerStep;
    constexpr std::size_t kGone = 300;
    // All left, so that no probe keeps the loop busy: the "p-" ones for
    // another 10 minutes, the "gone-" ones (last: the save reaches them last)
    // for 3 s.
    seed(kUp, kGone, 3s, PeerState::left);
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(daemon->status()["peers"], kUp + kGone);
    // Two newcomers, one of them under the name of a peer about to be forgotten.
    const UniqueFd fresh = loopback_socket(), again = loopback_socket();
    const kap::Register fresh_register = challenged(fresh, "fresh");
    const kap::Register again_register = challenged(again, "gone-0");
    ASSERT_NO_FATAL_FAILURE(begin_save());
    step();
    step();
    ASSERT_TRUE(saving());
    // The gone peers' forget_after runs out: they leave the table mid-save.
    clock.advance(2s);
    for (int i = 0; i < 100 && daemon->status()["events"]["forgotten"] != kGone; ++i) step();
    ASSERT_EQ(daemon->status()["events"]["forgotten"], kGone);
    ASSERT_TRUE(saving());
    ASSERT_NO_FATAL_FAILURE(accepted(fresh, fresh_register));
    ASSERT_NO_FATAL_FAILURE(accepted(again, again_register));
    ASSERT_EQ(daemon->status()["peers"], kUp + 2);
    EXPECT_TRUE(saving());  // all of the above happened mid-save
    finish_save();
    ASSERT_EQ(saves(), 1u);

    const ServerSnapshot first = saved();
    std::map<std::string, int> alive, records;
    for (const PeerRecord& r : first.peers) {
        ++records[r.name];
        if (answering(r.state)) ++alive[r.name];
    }
    for (const auto& [name, n] : alive) EXPECT_EQ(n, 1) << name;
    for (std::size_t i = 0; i < kUp; ++i) EXPECT_EQ(records[fmt::format("p-{}", i)], 1) << i;
    std::set<std::uint32_t> sessions;
    for (const PeerRecord& r : first.peers) EXPECT_TRUE(sessions.insert(r.session).second);
    // The forgotten peers the save had not reached are not in it.
    const auto names = by_name(first);
    for (std::size_t i = 1; i < kGone; ++i) EXPECT_FALSE(names.contains(fmt::format("gone-{}", i)));
    EXPECT_LE(first.peers.size(), kUp + 2);

    // The registrations asked for a save; it comes after this one, with both.
    for (int i = 0; i < 100 && saves() < 2; ++i) {
        clock.advance(100ms);
        step();
        if (saving()) finish_save();
    }
    ASSERT_EQ(saves(), 2u);
    const ServerSnapshot second = saved();
    EXPECT_EQ(second.peers.size(), kUp + 2);
    const auto now_saved = by_name(second);
    EXPECT_TRUE(now_saved.contains("fresh"));
    ASSERT_TRUE(now_saved.contains("gone-0"));
    EXPECT_TRUE(answering(now_saved.at("gone-0").state));  // its new session (not answered here)

    daemon.reset();
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(daemon->status()["peers"], kUp + 2);
}

// A crash mid-save (the process dies between two steps) leaves the previous
// file whole and a partial temporary copy that nothing reads.
TEST_F(StateSaveTest, CrashMidSaveKeepsThePreviousFile) {
    constexpr std::size_t kPeers = 8 * Daemon::kSavePeersPerStep;
    seed(kPeers);
    const auto before = read_file(state);
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_NO_FATAL_FAILURE(begin_save());
    step();
    step();
    ASSERT_TRUE(saving());
    daemon.reset();  // no stop(): as a SIGKILL would leave things
    EXPECT_EQ(read_file(state), before);
    ASSERT_TRUE(fs::exists(tmp));
    EXPECT_GT(fs::file_size(tmp), 0u);
    EXPECT_FALSE(decode_snapshot(read_file(tmp)));

    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(daemon->status()["peers"], kPeers);
    ASSERT_NO_FATAL_FAILURE(begin_save());
    finish_save();
    EXPECT_FALSE(fs::exists(tmp));
    EXPECT_EQ(saved().peers.size(), kPeers);
}

// SIGTERM mid-save: the loop is ending, so the table is saved whole at once
// (format version 1) and the streamed save is abandoned.
TEST_F(StateSaveTest, StopMidSaveSavesTheTableWhole) {
    constexpr std::size_t kPeers = 8 * Daemon::kSavePeersPerStep;
    seed(kPeers);
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_NO_FATAL_FAILURE(begin_save());
    step();
    ASSERT_TRUE(saving());
    ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
    for (int i = 0; i < 1000 && !daemon->stopping(); ++i) step();
    ASSERT_TRUE(daemon->stopping());
    EXPECT_FALSE(saving());
    EXPECT_FALSE(fs::exists(tmp));
    const auto bytes = read_file(state);
    EXPECT_EQ(bytes[11], ServerSnapshot::kVersion);
    EXPECT_EQ(saved().peers.size(), kPeers);
    for (int i = 0; i < 10; ++i) step();  // nothing left to step
    EXPECT_EQ(read_file(state), bytes);
}

}  // namespace
}  // namespace keepalive::test_support
