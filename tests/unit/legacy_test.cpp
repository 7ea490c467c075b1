// The Go keepalive module's text protocol: the codec's exact byte shapes
// (core/legacy.hpp), the peer side (LegacyPeerSession) and the server side in
// ServerCore (on_legacy_register / on_legacy_reply and legacy probes), all
// driven with a fake clock and recording sinks.
#include "core/legacy.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/legacy_peer.hpp"
#include "core/peer.hpp"
#include "core/peer_limits.hpp"
#include "core/peer_table.hpp"
#include "core/random.hpp"
#include "core/server.hpp"
#include "daemon/event_text.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

Bytes bytes(std::string_view s) {
    return Bytes(s.begin(), s.end());
}
std::string text(const Bytes& b) {
    return std::string(b.begin(), b.end());
}

// Printable form of a datagram for failure messages: NULs as \0.
std::string shown(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (c == '\0') {
            out += "\\0";
        } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
            static const char* hex = "0123456789abcdef";
            out += "\\x";
            out += hex[static_cast<unsigned char>(c) >> 4];
            out += hex[static_cast<unsigned char>(c) & 15];
        } else {
            out += c;
        }
    }
    return out;
}

std::optional<legacy::Registration> parse_registration(std::string_view s) {
    const Bytes b = bytes(s);
    return legacy::parse_registration(b);
}
std::optional<std::uint64_t> parse_probe(std::string_view s) {
    const Bytes b = bytes(s);
    return legacy::parse_probe(b);
}
// The name is copied out: Reply::name points into the bytes.
std::optional<std::pair<std::string, std::uint64_t>> parse_reply(std::string_view s) {
    const Bytes b = bytes(s);
    const auto r = legacy::parse_reply(b);
    if (!r) return std::nullopt;
    return std::pair{std::string(r->name), r->token};
}
Bytes reply_to(std::string_view name, std::string_view probe) {
    const Bytes p = bytes(probe);
    legacy::ReplyBuffer buf;
    const auto out = legacy::format_reply(name, p, buf);
    return Bytes(out.begin(), out.end());
}
std::string probe_text(std::uint64_t token) {
    legacy::ProbeBuffer buf;
    const auto out = legacy::format_probe(token, buf);
    return std::string(out.begin(), out.end());
}

// ---- codec: registration ---------------------------------------------------------

TEST(LegacyCodec, RegistrationHasTheExactShape) {
    EXPECT_EQ(legacy::format_registration({"peer1", 2, 3}), "peer1:2:3");
    EXPECT_EQ(legacy::format_registration({"a", 3600, 255}), "a:3600:255");

    const auto r = parse_registration("peer1:2:3");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->name, "peer1");
    EXPECT_EQ(r->interval_s, 2u);
    EXPECT_EQ(r->probes, 3u);

    const auto edge = parse_registration("x:3600:255");
    ASSERT_TRUE(edge);
    EXPECT_EQ(edge->interval_s, 3600u);
    EXPECT_EQ(edge->probes, 255u);
    const auto one = parse_registration("x:1:1");
    ASSERT_TRUE(one);
    EXPECT_EQ(one->interval_s, 1u);
    EXPECT_EQ(one->probes, 1u);
}

TEST(LegacyCodec, ShortAndLongNames) {
    const auto short_name = parse_registration("a:1:3");
    ASSERT_TRUE(short_name);
    EXPECT_EQ(short_name->name, "a");

    const std::string long_name(64, 'n');
    const auto long_reg = parse_registration(long_name + ":30:5");
    ASSERT_TRUE(long_reg);
    EXPECT_EQ(long_reg->name, long_name);
    EXPECT_FALSE(parse_registration(std::string(65, 'n') + ":30:5"));

    // Every character of the KAP/1 set except ':' (the separator).
    const auto chars = parse_registration("AZaz09._-@:7:2");
    ASSERT_TRUE(chars);
    EXPECT_EQ(chars->name, "AZaz09._-@");

    for (const std::string& name : {std::string("a"), std::string(64, 'z')}) {
        const std::string probe = "keepalive:5";
        const Bytes reply = reply_to(name, probe);
        EXPECT_EQ(reply.size(), name.size() + 1 + 246);
        const auto parsed = legacy::parse_reply(reply);
        ASSERT_TRUE(parsed) << name;
        EXPECT_EQ(parsed->name, name);
        EXPECT_EQ(parsed->token, 5u);
    }
    EXPECT_FALSE(parse_reply(std::string(65, 'z') + ":5"));
}

TEST(LegacyCodec, MalformedRegistrationsAreRejected) {
    const std::vector<std::string> bad = {
        "",
        ":",
        "::",
        "peer1",
        "peer1:2",
        "peer1:2:",
        "peer1::3",
        ":2:3",
        "peer1:2:3:",
        "peer1:2:3:4",
        "a:b:2:3",
        // signs, spaces, other number forms
        "peer1:+2:3",
        "peer1:-2:3",
        "peer1:2:+3",
        "peer1:2:-3",
        "peer1: 2:3",
        "peer1:2 :3",
        "peer1:2: 3",
        "peer1:2:3 ",
        " peer1:2:3",
        "peer1:2:3\n",
        "peer1:2:3\r\n",
        "peer1:0x2:3",
        "peer1:2.0:3",
        "peer1:1e3:3",
        // leading zeros and zero
        "peer1:02:3",
        "peer1:2:03",
        "peer1:00:3",
        "peer1:0:3",
        "peer1:2:0",
        // out of the protocol's ranges, and numbers that would wrap
        "peer1:3601:3",
        "peer1:2:256",
        "peer1:4294967298:3",
        "peer1:2:4294967299",
        "peer1:18446744073709551617:3",
        "peer1:99999999999999999999999999:3",
        // names outside the KAP/1 set, and too long
        "pe er:2:3",
        "peer/1:2:3",
        "peer#1:2:3",
        "peer,1:2:3",
        "p\xc3\xa9"
        "er:2:3",
        "\xff:2:3",
        "peer\n1:2:3",
        std::string(65, 'x') + ":2:3",
        // NULs: a registration is exact text, never padded
        std::string("peer1:2:3\0", 10),
        std::string("peer1\0:2:3", 10),
        std::string("\0:2:3", 5),
        std::string(256, '\0'),
        // things that are other messages of the protocol
        "keepalive:1",
        "peer1:7",
    };
    for (const auto& b : bad)
        EXPECT_FALSE(parse_registration(b)) << "accepted \"" << shown(b) << "\"";
}

// ---- codec: probe ----------------------------------------------------------------

TEST(LegacyCodec, ProbeHasTheExactShape) {
    EXPECT_EQ(probe_text(7), "keepalive:7");
    EXPECT_EQ(probe_text(1), "keepalive:1");
    EXPECT_EQ(probe_text(1234567890123), "keepalive:1234567890123");
    EXPECT_EQ(probe_text(UINT64_MAX), "keepalive:18446744073709551615");

    EXPECT_EQ(parse_probe("keepalive:7"), std::optional<std::uint64_t>(7));
    EXPECT_EQ(parse_probe("keepalive:1"), std::optional<std::uint64_t>(1));
    EXPECT_EQ(parse_probe("keepalive:18446744073709551615"),
              std::optional<std::uint64_t>(UINT64_MAX));
    for (std::uint64_t t : {1ull, 9ull, 10ull, 99ull, 100ull, 65536ull, 4294967296ull})
        EXPECT_EQ(parse_probe(probe_text(t)), std::optional<std::uint64_t>(t)) << t;
}

TEST(LegacyCodec, MalformedProbesAreRejected) {
    const std::vector<std::string> bad = {
        "",
        "keepalive",
        "keepalive:",
        "keepalive:0",
        "keepalive:07",
        "keepalive:+7",
        "keepalive:-7",
        "keepalive: 7",
        "keepalive:7 ",
        "keepalive:7\n",
        "keepalive:7:8",
        "keepalive:7x",
        "keepalive:18446744073709551616",
        "keepalive:99999999999999999999999",
        "Keepalive:7",
        "KEEPALIVE:7",
        "keepalive;7",
        " keepalive:7",
        "peer1:7",
        std::string("keepalive:7\0", 12),
        std::string("keepalive\0:7", 12),
    };
    for (const auto& b : bad) EXPECT_FALSE(parse_probe(b)) << "accepted \"" << shown(b) << "\"";
}

// ---- codec: reply ----------------------------------------------------------------

TEST(LegacyCodec, ReplyIsTheNameThenTheOldClientsBufferAfterTheFirstColon) {
    const Bytes reply = reply_to("peer1", "keepalive:7");
    // "peer1:" + the 246 bytes after "keepalive:" in a 256-byte buffer.
    ASSERT_EQ(reply.size(), 5u + 1u + 246u);
    Bytes expected = bytes("peer1:7");
    expected.resize(5 + 1 + 246, 0);
    EXPECT_EQ(reply, expected);
    EXPECT_EQ(std::count(reply.begin(), reply.end(), std::uint8_t{0}), 245);

    // The length does not depend on the token: the rest of the buffer is padding.
    const Bytes big = reply_to("peer1", "keepalive:18446744073709551615");
    ASSERT_EQ(big.size(), 252u);
    EXPECT_EQ(text(Bytes(big.begin(), big.begin() + 26)), "peer1:18446744073709551615");
    EXPECT_TRUE(std::all_of(big.begin() + 26, big.end(), [](std::uint8_t b) { return b == 0; }));

    const auto parsed = legacy::parse_reply(reply);
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->name, "peer1");
    EXPECT_EQ(parsed->token, 7u);
}

TEST(LegacyCodec, ReplyNameIsUpToTheFirstColonAndTokenUpToTheFirstNul) {
    using P = std::pair<std::string, std::uint64_t>;
    EXPECT_EQ(parse_reply("peer1:7"), std::optional<P>(P{"peer1", 7}));
    EXPECT_EQ(parse_reply(std::string("peer1:7\0", 8)), std::optional<P>(P{"peer1", 7}));
    EXPECT_EQ(parse_reply(std::string("peer1:7") + std::string(245, '\0')),
              std::optional<P>(P{"peer1", 7}));
    // Whatever follows the first NUL is the old client's stale buffer, not ours to judge.
    EXPECT_EQ(parse_reply(std::string("peer1:12\0"
                                      "3:xyz\xff",
                                      15)),
              std::optional<P>(P{"peer1", 12}));
    EXPECT_EQ(parse_reply(std::string("peer1:12\0\0\0\0keepalive:99", 24)),
              std::optional<P>(P{"peer1", 12}));
    EXPECT_EQ(parse_reply("peer1:18446744073709551615"), std::optional<P>(P{"peer1", UINT64_MAX}));
}

TEST(LegacyCodec, MalformedRepliesAreRejected) {
    const std::vector<std::string> bad = {
        "",
        ":",
        "peer1",
        "peer1:",
        std::string("peer1:\0\0\0", 9),
        ":7",
        std::string(":7\0", 3),
        "peer1:0",
        "peer1:07",
        "peer1:+7",
        "peer1:-7",
        "peer1: 7",
        "peer1:7 ",
        "peer1:7\n",
        "peer1:7x",
        "peer1:7:8",
        "peer1::7",
        std::string("peer1:7x\0", 9),
        "peer1:18446744073709551616",
        "peer1:99999999999999999999999999",
        "pe er:7",
        "peer/1:7",
        "p\xc3\xa9"
        "er:7",
        std::string("pe\0er:7", 7),
        std::string(65, 'x') + ":7",
        std::string(300, '\0'),
    };
    for (const auto& b : bad) EXPECT_FALSE(parse_reply(b)) << "accepted \"" << shown(b) << "\"";
}

TEST(LegacyCodec, ProbeLongerThanTheOldClientsBufferIsCutThere) {
    // The old client read at most 256 bytes: the echo stops at its buffer's end.
    const std::string probe = "keepalive:" + std::string(290, '1');
    const Bytes reply = reply_to("peer1", probe);
    ASSERT_EQ(reply.size(), 6u + 246u);
    EXPECT_EQ(text(reply), "peer1:" + std::string(246, '1'));

    // A probe whose first ':' is past the buffer leaves nothing to echo.
    const Bytes none = reply_to("p", std::string(300, 'k') + ":1");
    EXPECT_EQ(text(none), "p:");
}

TEST(LegacyCodec, RandomBytesNeverCrashAndValidMessagesRoundTrip) {
    const std::uint64_t seed = test_seed();
    std::mt19937_64 rng(seed);
    const std::string alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-@";
    for (int i = 0; i < 20000; ++i) {
        // Random bytes biased towards the protocol's own characters.
        Bytes b(rng() % 320);
        for (auto& c : b) {
            switch (rng() % 4) {
                case 0:
                    c = static_cast<std::uint8_t>(rng());
                    break;
                case 1:
                    c = ':';
                    break;
                case 2:
                    c = static_cast<std::uint8_t>('0' + rng() % 10);
                    break;
                default:
                    c = static_cast<std::uint8_t>(alphabet[rng() % alphabet.size()]);
                    break;
            }
        }
        if (const auto r = legacy::parse_registration(b)) {
            // Whatever parses is exactly what format_registration would write.
            EXPECT_EQ(legacy::format_registration(*r), text(b)) << "seed " << seed;
        }
        if (const auto t = legacy::parse_probe(b)) {
            EXPECT_EQ(probe_text(*t), text(b)) << "seed " << seed;
        }
        if (const auto r = legacy::parse_reply(b)) {
            EXPECT_TRUE(valid_peer_name(r->name)) << "seed " << seed;
            EXPECT_GE(r->token, 1u);
        }
        (void)reply_to("peer1", text(b));

        // A random valid exchange round-trips.
        std::string name(1 + rng() % 64, 'x');
        for (auto& c : name) c = alphabet[rng() % alphabet.size()];
        const legacy::Registration reg{name, static_cast<std::uint32_t>(1 + rng() % 3600),
                                       static_cast<std::uint32_t>(1 + rng() % 255)};
        const auto back = parse_registration(legacy::format_registration(reg));
        ASSERT_TRUE(back) << legacy::format_registration(reg) << " seed " << seed;
        EXPECT_EQ(back->name, reg.name);
        EXPECT_EQ(back->interval_s, reg.interval_s);
        EXPECT_EQ(back->probes, reg.probes);
        const std::uint64_t token = 1 + rng() % (rng() % 2 ? 1000 : UINT64_MAX - 1);
        const std::string probe = probe_text(token);
        const Bytes reply = reply_to(name, probe);
        EXPECT_EQ(reply.size(), name.size() + 1 + 246);
        const auto parsed = legacy::parse_reply(reply);
        ASSERT_TRUE(parsed) << name << " seed " << seed;
        EXPECT_EQ(parsed->name, name);
        EXPECT_EQ(parsed->token, token);
    }
}

// ---- LegacyPeerSession -----------------------------------------------------------

class RecordingPeerSink final : public LegacyPeerSink {
public:
    explicit RecordingPeerSink(const FakeClock& clock) : clock_(clock) {}
    struct Sent {
        TimePoint at;
        Bytes bytes;
    };
    void send_registration(std::span<const std::uint8_t> d) override {
        registrations.push_back({clock_.now(), Bytes(d.begin(), d.end())});
    }
    void send_reply(std::span<const std::uint8_t> d) override {
        replies.push_back({clock_.now(), Bytes(d.begin(), d.end())});
    }
    void legacy_event(Event e) override { events.emplace_back(clock_.now(), e); }

    std::vector<Sent> registrations;
    std::vector<Sent> replies;
    std::vector<std::pair<TimePoint, Event>> events;

private:
    const FakeClock& clock_;
};

class LegacyPeerTest : public ::testing::Test {
protected:
    void make(std::string name, std::uint32_t interval_s, std::uint32_t probes) {
        session = std::make_unique<LegacyPeerSession>(
            legacy::Registration{std::move(name), interval_s, probes}, random, sink);
    }
    void probe(std::uint64_t token) {
        const Bytes b = bytes(probe_text(token));
        session->on_probe(b, clock.now());
    }
    // Steps the session's timer like the event loop would, up to `until`.
    void run_until(TimePoint until) {
        for (int guard = 0; guard < 100000; ++guard) {
            const TimePoint d = session->next_deadline();
            if (d > until) break;
            clock.set(std::max(clock.now(), d));
            const std::size_t before = sink.registrations.size();
            session->on_timer(clock.now());
            ASSERT_GT(sink.registrations.size(), before) << "timer fired without progress";
        }
        clock.set(std::max(clock.now(), until));
    }

    FakeClock clock{kStart};
    SeededRandom random{test_seed()};
    RecordingPeerSink sink{clock};
    std::unique_ptr<LegacyPeerSession> session;
};

TEST_F(LegacyPeerTest, StartSendsExactlyTheRegistration) {
    make("peer1", 2, 3);
    session->start(clock.now());
    ASSERT_EQ(sink.registrations.size(), 1u);
    EXPECT_EQ(text(sink.registrations[0].bytes), "peer1:2:3");
    EXPECT_TRUE(sink.replies.empty());
    EXPECT_TRUE(sink.events.empty());
    EXPECT_FALSE(session->probed());
    // No probe yet: try again after 3 intervals (longer than the first backoff).
    EXPECT_EQ(session->next_deadline(), kStart + 6s);
}

TEST_F(LegacyPeerTest, AnswersEachProbeWithTheOldClientsBytes) {
    make("peer1", 2, 3);
    session->start(clock.now());
    for (std::uint64_t token = 1; token <= 12; ++token) {
        clock.advance(2s);
        probe(token);
        ASSERT_EQ(sink.replies.size(), token);
        const Bytes& r = sink.replies.back().bytes;
        const std::string t = std::to_string(token);
        ASSERT_EQ(r.size(), 5u + 1u + 246u) << token;
        EXPECT_EQ(text(Bytes(r.begin(), r.begin() + 6 + static_cast<long>(t.size()))),
                  "peer1:" + t);
        EXPECT_TRUE(std::all_of(r.begin() + 6 + static_cast<long>(t.size()), r.end(),
                                [](std::uint8_t b) { return b == 0; }));
        EXPECT_EQ(r, reply_to("peer1", probe_text(token)));
    }
    EXPECT_EQ(session->replies(), 12u);
    EXPECT_TRUE(session->probed());
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].second, LegacyPeerSink::Event::probed);
    EXPECT_EQ(sink.events[0].first, kStart + 2s);
    EXPECT_EQ(sink.registrations.size(), 1u);
}

TEST_F(LegacyPeerTest, WhatIsNotAProbeIsIgnored) {
    make("peer1", 2, 3);
    session->start(clock.now());
    const TimePoint deadline = session->next_deadline();
    clock.advance(1s);
    for (const std::string& d :
         {std::string(), std::string("hello"), std::string("keepalive:"),
          std::string("keepalive:0"), std::string("peer1:1"), std::string("keepalive:1\0", 12)}) {
        const Bytes b = bytes(d);
        session->on_probe(b, clock.now());
    }
    EXPECT_TRUE(sink.replies.empty());
    EXPECT_TRUE(sink.events.empty());
    EXPECT_FALSE(session->probed());
    EXPECT_EQ(session->next_deadline(), deadline);
}

TEST_F(LegacyPeerTest, TimerBeforeTheDeadlineDoesNothing) {
    make("peer1", 2, 3);
    session->start(clock.now());
    const TimePoint deadline = session->next_deadline();
    session->on_timer(deadline - 1ns);
    session->on_timer(kStart);
    EXPECT_EQ(sink.registrations.size(), 1u);
    EXPECT_EQ(session->next_deadline(), deadline);
}

TEST_F(LegacyPeerTest, RegistrationIsRepeatedWhileNoProbeComes) {
    make("peer1", 2, 3);
    session->start(clock.now());
    run_until(kStart + 6s - 1ns);
    EXPECT_EQ(sink.registrations.size(), 1u);
    run_until(kStart + 6s);
    ASSERT_EQ(sink.registrations.size(), 2u);
    EXPECT_EQ(sink.registrations[1].at, kStart + 6s);
    EXPECT_EQ(text(sink.registrations[1].bytes), "peer1:2:3");
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].second, LegacyPeerSink::Event::retrying);

    // Later the gap is max(3 intervals, the backoff), the backoff doubling with
    // jitter (half to all of it) up to 30 s.
    run_until(kStart + 10min);
    const auto& regs = sink.registrations;
    ASSERT_GE(regs.size(), 20u);
    Duration backoff = 1s;
    for (std::size_t i = 1; i < regs.size(); ++i) {
        const Duration gap = regs[i].at - regs[i - 1].at;
        EXPECT_GE(gap, std::max<Duration>(6s, backoff / 2)) << i;
        EXPECT_LE(gap, std::max<Duration>(6s, backoff)) << i;
        backoff = std::min<Duration>(backoff * 2, 30s);
        EXPECT_EQ(text(regs[i].bytes), "peer1:2:3");
    }
    EXPECT_GE(regs.back().at - regs[regs.size() - 2].at, 15s);
    EXPECT_EQ(sink.events.size(), regs.size() - 1);
    for (const auto& e : sink.events) EXPECT_EQ(e.second, LegacyPeerSink::Event::retrying);
    EXPECT_TRUE(sink.replies.empty());
}

TEST_F(LegacyPeerTest, ShortIntervalRetriesEveryThreeIntervalsAtFirst) {
    make("p", 1, 1);
    session->start(clock.now());
    run_until(kStart + 3s);
    ASSERT_EQ(sink.registrations.size(), 2u);
    EXPECT_EQ(sink.registrations[1].at, kStart + 3s);
    EXPECT_EQ(text(sink.registrations[1].bytes), "p:1:1");
}

TEST_F(LegacyPeerTest, ReRegistersAfterProbesPlusOneIntervalsOfSilence) {
    make("peer1", 2, 3);
    session->start(clock.now());
    TimePoint last_probe{};
    for (std::uint64_t token = 1; token <= 5; ++token) {
        clock.advance(2s);
        probe(token);
        last_probe = clock.now();
        EXPECT_EQ(session->next_deadline(), last_probe + 8s);
    }
    // The old server declares us down after 3 unanswered probes and forgets us;
    // one interval more without a probe and the peer registers again.
    run_until(last_probe + 8s - 1ns);
    EXPECT_EQ(sink.registrations.size(), 1u);
    run_until(last_probe + 8s);
    ASSERT_EQ(sink.registrations.size(), 2u);
    EXPECT_EQ(sink.registrations[1].at, last_probe + 8s);
    EXPECT_EQ(text(sink.registrations[1].bytes), "peer1:2:3");
    ASSERT_EQ(sink.events.size(), 2u);
    EXPECT_EQ(sink.events[1].second, LegacyPeerSink::Event::lost);
    EXPECT_FALSE(session->probed());

    // Then it waits for a probe as after start: backoff from the minimum again.
    EXPECT_EQ(session->next_deadline(), last_probe + 8s + 6s);
    run_until(last_probe + 14s);
    ASSERT_EQ(sink.registrations.size(), 3u);
    EXPECT_EQ(sink.events.back().second, LegacyPeerSink::Event::retrying);

    // A probe from the server (its token restarted) is answered and counts again.
    clock.advance(1s);
    probe(1);
    EXPECT_TRUE(session->probed());
    EXPECT_EQ(sink.events.back().second, LegacyPeerSink::Event::probed);
    EXPECT_EQ(sink.replies.back().bytes, reply_to("peer1", "keepalive:1"));
    EXPECT_EQ(session->next_deadline(), clock.now() + 8s);
}

TEST_F(LegacyPeerTest, OneProbeNeedsTwoIntervalsOfSilence) {
    make("peer1", 5, 1);
    session->start(clock.now());
    clock.advance(3s);
    probe(1);
    EXPECT_EQ(session->next_deadline(), clock.now() + 10s);
}

// ---- ServerCore: the legacy listener ----------------------------------------------

struct Sent {
    TimePoint at;
    Route route;
    Address to;
    Bytes bytes;
    std::optional<kap::Message> kap;  // set when the bytes are a KAP/1 datagram
};

struct Event {
    TimePoint at;
    EventKind kind;
    std::optional<PeerState> previous;
    std::string name;
    Protocol protocol;
    PeerState state;
    Address address;
    TimePoint since;
    std::uint32_t missed;
    std::string reason;  // in the daemon's words
};

class RecordingSink final : public ServerSink {
public:
    explicit RecordingSink(const FakeClock& clock) : clock_(clock) {}
    void send(const Route& route, const Address& to, std::span<const std::uint8_t> data) override {
        auto decoded = kap::decode(data);
        sent.push_back({clock_.now(), route, to, Bytes(data.begin(), data.end()),
                        decoded ? std::optional<kap::Message>(*decoded) : std::nullopt});
    }
    void peer_event(const PeerEvent& e) override {
        const Peer& p = e.peer;
        events.push_back({clock_.now(), e.kind, e.previous, std::string(p.name), p.protocol,
                          p.state, p.address, p.since, p.missed, event_reason(e)});
    }
    std::vector<Sent> sent;
    std::vector<Event> events;

private:
    const FakeClock& clock_;
};

struct PeerSnap {
    std::string name;
    Protocol protocol;
    std::uint32_t session;
    Address address;
    Route route;
    Duration interval;
    std::uint8_t probes;
    PeerState state;
    TimePoint since;
    std::uint64_t seq_sent;
    std::uint64_t seq_acked;
    std::uint32_t missed;
    std::uint64_t probes_sent;
    std::uint64_t acks_received;
    friend bool operator==(const PeerSnap&, const PeerSnap&) = default;
};

std::vector<PeerSnap> snapshot(const PeerTable& table) {
    std::vector<PeerSnap> out;
    table.for_each([&](PeerTable::Slot, const Peer& p) {
        out.push_back({std::string(p.name), p.protocol, p.session, p.address, *p.route, p.interval, p.probes,
                       p.state, p.since, p.seq_sent, p.seq_acked, p.missed, p.probes_sent,
                       p.acks_received});
    });
    return out;
}

// An old ka-client: answers every probe sent to its host's port 5002 with
// format_reply, from that port, after `delay`.
struct OldClient {
    std::string name;
    bool answering = true;
    Duration delay = 10ms;
};

const Address kPeerHost = addr("192.0.2.20:40000");  // registers from an ephemeral port
const Address kPeerProbe = addr("192.0.2.20:5002");
const Address kOtherHost = addr("192.0.2.30:40000");
const Address kOtherProbe = addr("192.0.2.30:5002");

class LegacyServerTest : public ::testing::Test {
protected:
    LegacyServerTest() {
        limits.min_interval = 100ms;
        limits.down_probe_interval = 5s;
        limits.forget_after = 10min;
    }
    void SetUp() override { make_server(); }
    void make_server() { server = std::make_unique<ServerCore>(limits, random, sink, clock.now()); }

    void register_legacy(std::string_view text, const Address& from) {
        const Bytes b = bytes(text);
        server->on_legacy_register(b, from, probe_route, kProbePort, clock.now());
    }
    void reply_bytes(const Bytes& b, const Address& from) {
        server->on_legacy_reply(b, from, clock.now());
    }
    void reply(std::string_view name, std::uint64_t token, const Address& from) {
        reply_bytes(reply_to(name, probe_text(token)), from);
    }

    // Registers `name` from kPeerHost with an old client answering on kPeerProbe.
    void add_old_client(const std::string& name, std::uint32_t interval_s, std::uint32_t probes,
                        const Address& from = kPeerHost) {
        Address probe_to = from;
        probe_to.set_port(kProbePort);
        clients[probe_to] = OldClient{name, true, 10ms};
        register_legacy(name + ":" + std::to_string(interval_s) + ":" + std::to_string(probes),
                        from);
    }

    const Peer& peer(std::string_view name) const { return peer_named(*server, name); }
    bool known(std::string_view name) const {
        return server->peers().find_name(name) != PeerTable::kNone;
    }
    std::uint64_t drops(Drop d) const { return drop_count(*server, d); }
    std::uint64_t total_drops() const { return test_support::total_drops(*server); }

    // Text probes sent to `to`, from index `from` of sink.sent.
    std::vector<Sent> probes_to(const Address& to, std::size_t from = 0) const {
        std::vector<Sent> out;
        for (std::size_t i = from; i < sink.sent.size(); ++i)
            if (sink.sent[i].to == to && !sink.sent[i].kap) out.push_back(sink.sent[i]);
        return out;
    }

    // Runs the core like the daemon's loop: timers and the old clients' replies
    // in time order (replies first on a tie: they arrived by then).
    void run_until(TimePoint until) {
        for (int guard = 0; guard < 10'000'000; ++guard) {
            const auto deadline = server->next_deadline();
            std::optional<TimePoint> delivery;
            if (!in_flight.empty()) delivery = in_flight.begin()->first;
            if (delivery && *delivery <= until && (!deadline || *delivery <= *deadline)) {
                auto node = in_flight.extract(in_flight.begin());
                clock.set(std::max(clock.now(), *delivery));
                reply_bytes(node.mapped().bytes, node.mapped().from);
                continue;
            }
            if (deadline && *deadline <= until) {
                clock.set(std::max(clock.now(), *deadline));
                const std::size_t before = sink.sent.size();
                server->on_timer(clock.now());
                dispatch(before);
                continue;
            }
            clock.set(std::max(clock.now(), until));
            return;
        }
        FAIL() << "run_until did not finish";
    }
    void run_for(Duration d) { run_until(clock.now() + d); }
    // Right after a registration: up to the moment the first probe is sent.
    void run_to_first_probe() {
        ASSERT_TRUE(server->next_deadline());
        run_until(*server->next_deadline());
    }

    void dispatch(std::size_t from) {
        for (std::size_t i = from; i < sink.sent.size(); ++i) {
            const Sent& s = sink.sent[i];
            if (s.kap) continue;
            const auto it = clients.find(s.to);
            if (it == clients.end() || !it->second.answering) continue;
            in_flight.emplace(s.at + it->second.delay,
                              Flight{reply_to(it->second.name, text(s.bytes)), s.to});
        }
    }

    // KAP/1 registration with the cookie handshake; returns the final answer.
    kap::Message kap1_register(const std::string& name, const Address& from,
                               std::uint64_t incarnation = 0x77) {
        kap::Register r{next_nonce_++, incarnation, 1000, 3, {}, name};
        const auto send = [&] {
            Bytes b(kap::kMaxDatagramSize);
            b.resize(kap::encode({.session = 0, .body = r}, b));
            const std::size_t before = sink.sent.size();
            server->on_datagram(b, from, kap1_route, clock.now());
            EXPECT_EQ(sink.sent.size(), before + 1);
            EXPECT_TRUE(sink.sent.back().kap.has_value());
            return sink.sent.back().kap.value_or(kap::Message{});
        };
        kap::Message m = send();
        if (kap::type_of(m) == kap::Type::challenge) {
            r.cookie = std::get<kap::Challenge>(m.body).cookie;
            m = send();
        }
        return m;
    }

    struct Flight {
        Bytes bytes;
        Address from;
    };

    static constexpr std::uint16_t kProbePort = 5002;
    FakeClock clock{kStart};
    SeededRandom random{42};
    RecordingSink sink{clock};
    PeerLimits limits;
    std::unique_ptr<ServerCore> server;
    Route probe_route{7, addr("192.0.2.1:5002")};
    Route kap1_route{1, addr("192.0.2.1:7371")};
    std::unordered_map<Address, OldClient, AddressHash> clients;
    std::multimap<TimePoint, Flight> in_flight;
    std::uint64_t next_nonce_ = 1000;
};

TEST_F(LegacyServerTest, RegistrationCreatesALegacyPeerAndIsNeverAnswered) {
    register_legacy("peer1:2:3", kPeerHost);
    EXPECT_TRUE(sink.sent.empty());
    EXPECT_EQ(server->datagrams_received(), 1u);
    EXPECT_EQ(total_drops(), 0u);
    ASSERT_EQ(server->peers().size(), 1u);
    const Peer& p = peer("peer1");
    EXPECT_EQ(p.protocol, Protocol::legacy);
    EXPECT_EQ(p.address, kPeerProbe);  // the registration's IP, port 5002
    EXPECT_EQ(*p.route, probe_route);
    EXPECT_EQ(p.interval, 2s);
    EXPECT_EQ(p.probes, 3);
    EXPECT_EQ(p.state, PeerState::up);
    EXPECT_EQ(p.since, kStart);
    EXPECT_EQ(p.seq_sent, 0u);
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].kind, EventKind::registered);
    EXPECT_EQ(sink.events[0].protocol, Protocol::legacy);
    EXPECT_FALSE(sink.events[0].previous);
    ASSERT_TRUE(server->next_deadline());
    EXPECT_GT(*server->next_deadline(), kStart);
    EXPECT_LE(*server->next_deadline(), kStart + 2s);
}

TEST_F(LegacyServerTest, ProbesCarryTokensFromOneEveryIntervalFromTheProbeSocket) {
    add_old_client("peer1", 2, 3);
    run_to_first_probe();
    run_for(18500ms);
    const auto probes = probes_to(kPeerProbe);
    ASSERT_EQ(probes.size(), 10u);
    for (std::size_t i = 0; i < probes.size(); ++i) {
        EXPECT_EQ(text(probes[i].bytes), "keepalive:" + std::to_string(i + 1));
        EXPECT_EQ(probes[i].route, probe_route);
        if (i > 0) {
            EXPECT_EQ(probes[i].at - probes[i - 1].at, 2s);
        }
    }
    EXPECT_EQ(sink.sent.size(), probes.size());  // nothing else, ever
    const Peer& p = peer("peer1");
    EXPECT_EQ(p.state, PeerState::up);
    EXPECT_EQ(p.seq_acked, 10u);
    EXPECT_EQ(p.acks_received, 10u);
    EXPECT_EQ(p.rtt, std::optional<Duration>(10ms));
    EXPECT_EQ(total_drops(), 0u);
    EXPECT_EQ(sink.events.size(), 1u);
}

TEST_F(LegacyServerTest, SilentPeerIsDownExactlyProbesTimesIntervalAfterTheFirstUnansweredProbe) {
    add_old_client("peer1", 2, 3);
    run_for(11s);
    const std::size_t answered = probes_to(kPeerProbe).size();
    ASSERT_GE(answered, 5u);
    clients[kPeerProbe].answering = false;
    const std::size_t events = sink.events.size();
    run_for(2s);
    const auto after = probes_to(kPeerProbe);
    ASSERT_EQ(after.size(), answered + 1);
    const TimePoint first_unanswered = after.back().at;

    run_until(first_unanswered + 2s - 1ns);
    EXPECT_EQ(peer("peer1").state, PeerState::up);
    run_until(first_unanswered + 2s);
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::suspect);
    EXPECT_EQ(sink.events.back().at, first_unanswered + 2s);

    run_until(first_unanswered + 6s - 1ns);
    EXPECT_EQ(peer("peer1").state, PeerState::suspect);
    EXPECT_EQ(peer("peer1").missed, 2u);
    run_until(first_unanswered + 6s);
    ASSERT_EQ(sink.events.size(), events + 2);
    const Event& down = sink.events.back();
    EXPECT_EQ(down.kind, EventKind::down);
    EXPECT_EQ(down.previous, PeerState::suspect);
    EXPECT_EQ(down.at, first_unanswered + 6s);
    EXPECT_EQ(down.since, first_unanswered + 6s);
    EXPECT_EQ(down.protocol, Protocol::legacy);
    EXPECT_EQ(down.missed, 3u);
    EXPECT_EQ(down.reason, "detection time expired");
    EXPECT_EQ(peer("peer1").state, PeerState::down);

    // Tokens kept growing by one, every interval, on the same grid.
    const auto all = probes_to(kPeerProbe);
    for (std::size_t i = 0; i < all.size(); ++i)
        EXPECT_EQ(text(all[i].bytes), "keepalive:" + std::to_string(i + 1));
    for (std::size_t i = answered; i < answered + 3; ++i)
        EXPECT_EQ(all[i].at, first_unanswered + 2s * static_cast<int>(i - answered));
}

TEST_F(LegacyServerTest, DownPeerIsProbedSlowlyComesBackOnAReplyAndIsForgottenLater) {
    limits.down_probe_interval = 5s;
    limits.forget_after = 60s;
    make_server();
    add_old_client("peer1", 1, 2);
    run_for(5s);
    clients[kPeerProbe].answering = false;
    run_for(4s);
    ASSERT_EQ(peer("peer1").state, PeerState::down);
    const TimePoint down_at = peer("peer1").since;
    const std::size_t n = probes_to(kPeerProbe).size();
    run_until(down_at + 10s);
    const auto slow = probes_to(kPeerProbe, 0);
    ASSERT_EQ(slow.size(), n + 2);
    EXPECT_EQ(slow[n].at, down_at + 5s);
    EXPECT_EQ(slow[n + 1].at, down_at + 10s);
    // Tokens keep counting while down.
    EXPECT_EQ(text(slow[n + 1].bytes), "keepalive:" + std::to_string(n + 2));

    clients[kPeerProbe].answering = true;
    const std::size_t events = sink.events.size();
    run_until(down_at + 15s + 10ms);
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::up);
    EXPECT_EQ(sink.events.back().previous, PeerState::down);
    EXPECT_EQ(sink.events.back().at, down_at + 15s + 10ms);
    run_for(10s);
    EXPECT_EQ(peer("peer1").state, PeerState::up);

    // Silent for good: forgotten forget_after after it went down again.
    clients[kPeerProbe].answering = false;
    run_for(5s);
    ASSERT_EQ(peer("peer1").state, PeerState::down);
    const TimePoint down_again = peer("peer1").since;
    run_until(down_again + 60s - 1ns);
    EXPECT_TRUE(known("peer1"));
    run_until(down_again + 60s);
    EXPECT_FALSE(known("peer1"));
    EXPECT_EQ(sink.events.back().kind, EventKind::forgotten);
    const std::size_t sent = sink.sent.size();
    run_for(5min);
    EXPECT_EQ(sink.sent.size(), sent);
}

TEST_F(LegacyServerTest, RegistrationsOutsideTheLimitsAreDroppedAndCounted) {
    limits.min_interval = 2s;
    limits.max_interval = 10s;
    limits.max_probes = 5;
    make_server();
    for (const char* r : {"a:1:3", "a:11:3", "a:3600:3", "a:2:6", "a:2:255", "a:1:6"})
        register_legacy(r, kPeerHost);
    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_EQ(drops(Drop::legacy_malformed), 6u);
    EXPECT_EQ(total_drops(), 6u);
    EXPECT_TRUE(sink.sent.empty());
    EXPECT_TRUE(sink.events.empty());
    EXPECT_FALSE(server->next_deadline());

    // The edges are inside: a request is refused, never clamped.
    register_legacy("a:2:5", kPeerHost);
    register_legacy("b:10:1", kOtherHost);
    ASSERT_EQ(server->peers().size(), 2u);
    EXPECT_EQ(peer("a").interval, 2s);
    EXPECT_EQ(peer("a").probes, 5);
    EXPECT_EQ(peer("b").interval, 10s);
    EXPECT_EQ(total_drops(), 6u);
}

TEST_F(LegacyServerTest, MalformedDatagramsAreCountedAndChangeNothing) {
    add_old_client("peer1", 2, 3);
    run_for(10s);
    const auto before = snapshot(server->peers());
    const std::size_t sent = sink.sent.size();
    const std::size_t events = sink.events.size();
    const std::vector<std::string> garbage = {
        "",
        "peer1",
        "peer1:2x",
        "peer1:2:3:4",
        "peer1:0:3",
        "peer1:2:0",
        "peer1:+2:3",
        "peer1:02:3",
        "pe er:2:3",
        std::string("peer1:2:3\0", 10),
        "\xff\xfe:1:1",
        "peer1:99999999999999999999:3",
        std::string(400, 'x'),
    };
    for (const auto& g : garbage) register_legacy(g, kPeerHost);
    EXPECT_EQ(drops(Drop::legacy_malformed), garbage.size());
    for (const auto& g : garbage) reply_bytes(bytes(g), kPeerProbe);
    EXPECT_EQ(drops(Drop::legacy_malformed), 2 * garbage.size());
    EXPECT_EQ(total_drops(), 2 * garbage.size());
    EXPECT_EQ(snapshot(server->peers()), before);
    EXPECT_EQ(sink.sent.size(), sent);
    EXPECT_EQ(sink.events.size(), events);
}

TEST_F(LegacyServerTest, ReRegistrationFromTheSameHostRestartsTheToken) {
    add_old_client("peer1", 2, 3);
    run_to_first_probe();
    run_for(6100ms);
    ASSERT_EQ(peer("peer1").seq_acked, 4u);
    const std::uint32_t session = peer("peer1").session;
    const std::size_t events = sink.events.size();
    const std::size_t n = probes_to(kPeerProbe).size();

    // The old client restarted: a new ephemeral port, the same IP.
    register_legacy("peer1:2:3", addr("192.0.2.20:40001"));
    EXPECT_EQ(server->peers().size(), 1u);
    EXPECT_EQ(peer("peer1").seq_sent, 0u);
    EXPECT_EQ(peer("peer1").seq_acked, 0u);
    EXPECT_EQ(peer("peer1").session, session);
    EXPECT_EQ(peer("peer1").address, kPeerProbe);
    EXPECT_EQ(sink.events.size(), events);  // not a new peer, not a move
    EXPECT_EQ(total_drops(), 0u);

    // A reply to a token of the old run is stale now.
    reply("peer1", 4, kPeerProbe);
    EXPECT_EQ(drops(Drop::stale_ack), 1u);

    run_for(2s);
    const auto probes = probes_to(kPeerProbe, 0);
    ASSERT_EQ(probes.size(), n + 1);
    EXPECT_EQ(text(probes[n].bytes), "keepalive:1");
    run_for(10s);
    EXPECT_EQ(peer("peer1").state, PeerState::up);
    EXPECT_EQ(text(probes_to(kPeerProbe).back().bytes),
              "keepalive:" + std::to_string(peer("peer1").seq_sent));

    // New parameters apply.
    register_legacy("peer1:3:4", kPeerHost);
    EXPECT_EQ(peer("peer1").interval, 3s);
    EXPECT_EQ(peer("peer1").probes, 4);
}

TEST_F(LegacyServerTest, ReRegistrationOfADownPeerBringsItUp) {
    add_old_client("peer1", 1, 2);
    run_for(3s);
    clients[kPeerProbe].answering = false;
    run_for(4s);
    ASSERT_EQ(peer("peer1").state, PeerState::down);
    const std::size_t events = sink.events.size();
    register_legacy("peer1:1:2", kPeerHost);
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::up);
    EXPECT_EQ(sink.events.back().previous, PeerState::down);
    EXPECT_EQ(peer("peer1").state, PeerState::up);
    EXPECT_EQ(peer("peer1").seq_sent, 0u);
    EXPECT_EQ(peer("peer1").missed, 0u);
}

TEST_F(LegacyServerTest, LiveNameFromAnotherHostIsRefusedAndADownOneIsTakenOver) {
    add_old_client("peer1", 1, 3);
    run_for(5s);
    auto before = snapshot(server->peers());
    const std::size_t events = sink.events.size();
    register_legacy("peer1:1:3", kOtherHost);
    register_legacy("peer1:5:1", kOtherHost);
    EXPECT_EQ(drops(Drop::legacy_refused), 2u);
    EXPECT_EQ(snapshot(server->peers()), before);
    EXPECT_EQ(sink.events.size(), events);

    // Suspect is still held.
    clients[kPeerProbe].answering = false;
    run_for(2s);
    ASSERT_EQ(peer("peer1").state, PeerState::suspect);
    before = snapshot(server->peers());
    register_legacy("peer1:1:3", kOtherHost);
    EXPECT_EQ(drops(Drop::legacy_refused), 3u);
    EXPECT_EQ(snapshot(server->peers()), before);

    // Down: the name is free for another host, which is reported as a move.
    run_for(3s);
    ASSERT_EQ(peer("peer1").state, PeerState::down);
    const std::size_t e = sink.events.size();
    register_legacy("peer1:1:3", kOtherHost);
    EXPECT_EQ(drops(Drop::legacy_refused), 3u);
    EXPECT_EQ(peer("peer1").address, kOtherProbe);
    EXPECT_EQ(peer("peer1").state, PeerState::up);
    ASSERT_EQ(sink.events.size(), e + 2);
    EXPECT_EQ(sink.events[e].kind, EventKind::moved);
    EXPECT_EQ(sink.events[e + 1].kind, EventKind::up);
    EXPECT_EQ(server->peers().size(), 1u);

    // Now the first host's replies are the ones refused.
    const std::uint64_t unknown = drops(Drop::legacy_unknown);
    run_for(1500ms);
    reply("peer1", peer("peer1").seq_sent, kPeerProbe);
    EXPECT_EQ(drops(Drop::legacy_unknown), unknown + 1);
}

TEST_F(LegacyServerTest, RepliesAreAcceptedFromTheRegisteredIpOnly) {
    // Never answered yet, so on probation: probed every second (10 probes
    // keep it from going down and being forgotten within this test).
    add_old_client("peer1", 2, 10);
    clients[kPeerProbe].answering = false;
    run_for(2500ms);
    const std::uint64_t sent = peer("peer1").seq_sent;
    ASSERT_GE(sent, 1u);
    const auto before = snapshot(server->peers());

    reply("peer1", sent, kOtherProbe);
    reply("peer1", sent, kOtherHost);
    reply("peer1", sent, addr("[2001:db8::20]:5002"));
    reply("nobody", sent, kPeerProbe);
    EXPECT_EQ(drops(Drop::legacy_unknown), 4u);
    EXPECT_EQ(total_drops(), 4u);
    EXPECT_EQ(snapshot(server->peers()), before);

    // The registered IP, from any port (the check is the host, as documented).
    reply("peer1", sent, addr("192.0.2.20:41234"));
    EXPECT_EQ(peer("peer1").seq_acked, sent);
    EXPECT_EQ(peer("peer1").acks_received, 1u);
}

TEST_F(LegacyServerTest, RepliesWithBadTokensAreDropped) {
    add_old_client("peer1", 2, 10);  // on probation: a probe a second
    clients[kPeerProbe].answering = false;
    run_for(4500ms);  // tokens 1 .. sent sent, none answered
    const std::uint64_t sent = peer("peer1").seq_sent;
    ASSERT_GE(sent, 2u);
    auto before = snapshot(server->peers());

    reply("peer1", sent + 1, kPeerProbe);    // never sent
    reply("peer1", UINT64_MAX, kPeerProbe);  // never sent
    EXPECT_EQ(drops(Drop::stale_ack), 2u);
    reply_bytes(bytes("peer1:0"), kPeerProbe);
    reply_bytes(bytes("peer1:"), kPeerProbe);
    reply_bytes(bytes("peer1:-1"), kPeerProbe);
    EXPECT_EQ(drops(Drop::legacy_malformed), 3u);
    EXPECT_EQ(snapshot(server->peers()), before);

    reply("peer1", sent, kPeerProbe);
    EXPECT_EQ(peer("peer1").seq_acked, sent);
    reply("peer1", sent, kPeerProbe);      // a duplicate
    reply("peer1", sent - 1, kPeerProbe);  // older than the newest acknowledged
    EXPECT_EQ(drops(Drop::stale_ack), 4u);
    EXPECT_EQ(peer("peer1").acks_received, 1u);
}

TEST_F(LegacyServerTest, Kap1RegisterForALiveLegacyNameIsRejectedWithDiag3) {
    add_old_client("peer1", 1, 2);
    run_for(3s);
    const auto before = snapshot(server->peers());
    const kap::Message m = kap1_register("peer1", addr("192.0.2.40:7000"));
    ASSERT_EQ(kap::type_of(m), kap::Type::reject);
    EXPECT_EQ(m.diag, kap::Diag::not_permitted);
    EXPECT_EQ(snapshot(server->peers()), before);

    // Once it is down, a KAP/1 peer may take the name.
    clients[kPeerProbe].answering = false;
    run_for(3s);
    ASSERT_EQ(peer("peer1").state, PeerState::down);
    const std::size_t events = sink.events.size();
    const kap::Message ok = kap1_register("peer1", addr("192.0.2.40:7000"));
    ASSERT_EQ(kap::type_of(ok), kap::Type::accept);
    EXPECT_EQ(peer("peer1").protocol, Protocol::kap1);
    EXPECT_EQ(peer("peer1").address, addr("192.0.2.40:7000"));
    EXPECT_EQ(peer("peer1").session, ok.session);
    EXPECT_EQ(peer("peer1").state, PeerState::up);
    ASSERT_GT(sink.events.size(), events);
    // From another host: a takeover, reported with the address it left.
    EXPECT_EQ(sink.events.back().kind, EventKind::moved);

    // Probes now are KAP/1, to the new address, by the KAP/1 route.
    const std::size_t sent = sink.sent.size();
    run_for(1500ms);
    ASSERT_GT(sink.sent.size(), sent);
    for (std::size_t i = sent; i < sink.sent.size(); ++i) {
        ASSERT_TRUE(sink.sent[i].kap);
        EXPECT_EQ(kap::type_of(*sink.sent[i].kap), kap::Type::probe);
        EXPECT_EQ(sink.sent[i].route, kap1_route);
    }
    // And a legacy registration can no longer take it back.
    register_legacy("peer1:1:2", kPeerHost);
    EXPECT_EQ(drops(Drop::legacy_refused), 1u);
    EXPECT_EQ(peer("peer1").protocol, Protocol::kap1);
}

TEST_F(LegacyServerTest, LegacyRegistrationForAKap1NameIsRefused) {
    ASSERT_EQ(kap::type_of(kap1_register("web1", addr("192.0.2.40:7000"))), kap::Type::accept);
    const auto before = snapshot(server->peers());
    register_legacy("web1:1:3", addr("192.0.2.40:40000"));
    EXPECT_EQ(drops(Drop::legacy_refused), 1u);
    EXPECT_EQ(snapshot(server->peers()), before);
}

TEST_F(LegacyServerTest, FullTableRefusesNewLegacyNamesButNotReRegistrations) {
    limits.max_peers = 1;
    make_server();
    add_old_client("peer1", 1, 3);
    register_legacy("peer2:1:3", kOtherHost);
    EXPECT_EQ(drops(Drop::legacy_refused), 1u);
    EXPECT_FALSE(known("peer2"));
    register_legacy("peer1:1:3", kPeerHost);
    EXPECT_EQ(drops(Drop::legacy_refused), 1u);
    EXPECT_EQ(server->peers().size(), 1u);
}

TEST_F(LegacyServerTest, ShutdownSaysNothingToLegacyPeers) {
    add_old_client("peer1", 1, 3);
    run_for(3s);
    const std::size_t sent = sink.sent.size();
    server->shutdown();
    EXPECT_EQ(sink.sent.size(), sent);
}

TEST_F(LegacyServerTest, Kap1AckOrByeCannotActOnALegacyPeer) {
    add_old_client("peer1", 1, 3);
    clients[kPeerProbe].answering = false;
    run_for(1500ms);
    const Peer& p = peer("peer1");
    ASSERT_EQ(p.seq_sent, 1u);
    const std::uint32_t session = p.session;
    const auto before = snapshot(server->peers());

    // KAP/1 datagrams naming the legacy peer's session id, from its own address
    // (the id is shown by keepalivectl, and a source address is easy to forge).
    const auto deliver = [&](const kap::Message& m) {
        Bytes b(kap::kMaxDatagramSize);
        b.resize(kap::encode(m, b));
        server->on_datagram(b, kPeerProbe, kap1_route, clock.now());
    };
    deliver({.session = session, .body = kap::Ack{1, 0, 0}});
    deliver({.diag = kap::Diag::shutting_down, .session = session, .body = kap::Bye{1}});
    EXPECT_EQ(snapshot(server->peers()), before);
    EXPECT_EQ(peer("peer1").state, PeerState::up);
    EXPECT_EQ(drops(Drop::unknown_session), 2u);
}

TEST_F(LegacyServerTest, RandomGarbageOnBothPortsChangesNothing) {
    const std::uint64_t seed = test_seed();
    std::mt19937_64 rng(seed);
    add_old_client("peer1", 1, 3);
    add_old_client("peer2", 2, 2, kOtherHost);
    run_for(10s);
    ASSERT_EQ(peer("peer1").state, PeerState::up);
    ASSERT_EQ(peer("peer2").state, PeerState::up);

    const Address attacker = addr("192.0.2.99:5002");
    const std::vector<std::string> shapes = {
        "peer1:", "peer2:", "keepalive:", "peer1:1:", ":", "peer2:2:2"};
    std::uint64_t sent_garbage = 0;
    for (int round = 0; round < 50; ++round) {
        const auto before = snapshot(server->peers());
        const std::uint64_t drops_before = total_drops();
        const std::size_t events = sink.events.size();
        std::uint64_t n = 0;
        for (int i = 0; i < 200; ++i) {
            Bytes b;
            if (rng() % 2) {
                b.resize(rng() % 300);
                for (auto& c : b) c = static_cast<std::uint8_t>(rng());
            } else {
                b = bytes(shapes[rng() % shapes.size()]);
                const std::size_t extra = rng() % 24;
                for (std::size_t k = 0; k < extra; ++k)
                    b.push_back(static_cast<std::uint8_t>(rng() % 3 ? '0' + rng() % 10 : rng()));
            }
            // Only a registration that really parses may act, and it comes from
            // another host: for a live name it is refused.
            if (legacy::parse_registration(b)) {
                const auto r = legacy::parse_registration(b);
                if (!known(r->name)) continue;
            }
            if (rng() % 2)
                server->on_legacy_register(b, attacker, probe_route, kProbePort, clock.now());
            else
                reply_bytes(b, attacker);
            ++n;
        }
        EXPECT_EQ(snapshot(server->peers()), before) << "seed " << seed;
        EXPECT_EQ(total_drops(), drops_before + n) << "seed " << seed;
        EXPECT_EQ(sink.events.size(), events) << "seed " << seed;
        sent_garbage += n;
        run_for(std::chrono::milliseconds(rng() % 3000));
        EXPECT_EQ(peer("peer1").state, PeerState::up) << "seed " << seed;
        EXPECT_EQ(peer("peer2").state, PeerState::up) << "seed " << seed;
    }
    EXPECT_GT(sent_garbage, 5000u);
}

}  // namespace
}  // namespace keepalive
