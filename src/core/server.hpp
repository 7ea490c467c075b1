// The server side of KAP/1 without I/O: datagrams and time go in, datagrams
// to send and peer events come out through a ServerSink. The daemon owns the
// sockets; tests drive this directly with a fake clock.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/codec.hpp"
#include "core/cookie.hpp"
#include "core/load_shedder.hpp"
#include "core/peer_limits.hpp"
#include "core/peer_snapshot.hpp"
#include "core/peer_table.hpp"
#include "core/random.hpp"
#include "core/reply_budget.hpp"
#include "core/timer_wheel.hpp"

namespace keepalive {

// Why the server dropped a datagram without acting on it.
enum class Drop : std::uint8_t {
    too_short,
    bad_magic,
    bad_version,
    bad_length,
    bad_flags,
    bad_type,
    bad_size,
    unauthenticated,
    wrong_direction,   // a server-to-peer type sent to the server
    wrong_source,      // ACK or BYE from an address other than the session's
    stale_ack,         // seq not above the highest acknowledged, or never sent; wrong incarnation
    stale_bye,         // BYE seq below the highest acknowledged
    bad_diag,          // BYE from a peer with a diag other than "shutting down"
    unknown_session,   // answered with BYE diag 7 when the rate limit allows
    rate_limited,      // over the per-source budget of session-less replies: not answered
    legacy_malformed,  // legacy (Go module) datagram that does not parse
    legacy_unknown,    // legacy reply for no known peer, or from another address
    legacy_refused,    // legacy registration for a name held by another host, or table full
    stale_cookie,      // REGISTER with a cookie that is not (or no longer) valid: challenged again
    not_allowed,       // registration from a source outside [peers] allow (REJECT diag 3 in budget)
};
inline constexpr std::size_t kDropCount = 20;
std::string_view to_string(Drop);
Drop drop_for(kap::DecodeError);

using DropCounters = std::array<std::uint64_t, kDropCount>;

class ServerSink {
public:
    virtual ~ServerSink() = default;
    virtual void send(const Route& route, const Address& to,
                      std::span<const std::uint8_t> data) = 0;
    virtual void peer_event(const PeerEvent& event) = 0;
};

class ServerCore {
public:
    // Answers to ACK/BYE for unknown sessions, per source host and second.
    static constexpr unsigned kUnknownSessionRepliesPerSecond = 4;
    // Replies to sources not yet proven (CHALLENGE, REJECT "not permitted") and
    // legacy registrations of peers that have never answered, per source host
    // and second: as many as one host may hold sessions (max_per_host), so a
    // NAT full of peers can register at once, and at least this many.
    static constexpr std::uint32_t kMinHandshakeRepliesPerSecond = 16;
    // Until a session has answered a probe, it is probed at most this far
    // apart: a registration nobody answers is down after at most probes x 1 s,
    // whatever interval it was granted, and forgotten a minute later.
    static constexpr Duration kProbationStep = std::chrono::seconds(1);
    // How long a down session that never answered is kept before it is forgotten.
    static constexpr Duration kUnansweredForgetAfter = std::chrono::minutes(1);
    static constexpr std::uint8_t kUnansweredLegacyProbes = 3;
    // Unanswered probes in a row not counted against a peer because the
    // server doubted its own reception or timing; past this they count regardless.
    static constexpr std::uint8_t kMaxWithheld = 3;
    // The wheel's slots of 1 ms: a turn of 16.4 s holds a whole interval of
    // up to 16 s, so a visited slot holds only entries due in this turn
    // instead of being scanned again for later ones (at 1 M peers at 10 s,
    // 244 entries a slot with 4096 slots, 59 % of them not yet due). 128 KiB.
    static constexpr std::size_t kWheelSlots = 16384;

    ServerCore(const PeerLimits& limits, RandomSource& random, ServerSink& sink, TimePoint now);
    ServerCore(const ServerCore&) = delete;
    ServerCore& operator=(const ServerCore&) = delete;

    // One received KAP/1 datagram; `route` names the socket and local address it came to.
    void on_datagram(std::span<const std::uint8_t> data, const Address& from, const Route& route,
                     TimePoint now);
    // A hint for a batch of received datagrams about to go to on_datagram():
    // brings the session index cells and peer records their lookups read into
    // the cache first, so that a batch's cache misses overlap instead of each
    // lookup waiting for its own. Changes nothing; any bytes are fine.
    void prefetch(std::span<const std::span<const std::uint8_t>> batch) const;

    // Datagrams of the Go module's text protocol (see core/legacy.hpp): a
    // registration that came to the legacy register socket, probes leaving by
    // `probe_route` to the registering host's `probe_port`; and a reply that
    // came to the probe socket.
    void on_legacy_register(std::span<const std::uint8_t> data, const Address& from,
                            const Route& probe_route, std::uint16_t probe_port, TimePoint now);
    void on_legacy_reply(std::span<const std::uint8_t> data, const Address& from, TimePoint now);

    // An ICMP error the kernel reported for a datagram sent to `to` (IP_RECVERR):
    // `error` is its errno (ECONNREFUSED for port unreachable, EHOSTUNREACH,
    // ENETUNREACH, ...), `reporter` the host that sent it, `quoted` the start of
    // the datagram it quotes. Only a KAP/1 PROBE to the session's own address
    // counts: it is recorded on the peer (last_error), given as the reason if
    // the peer goes down, and with limits().fast_down_on_icmp a port
    // unreachable declares it down at once. Anything else is ignored.
    void on_icmp_error(const Address& to, int error, const std::optional<Address>& reporter,
                       std::span<const std::uint8_t> quoted, TimePoint now);

    // Runs due probes, detections and forgettings, at most kMaxDuePerStep of
    // them, so that one late wake-up (a host that held the daemon off its CPU,
    // a million peers due at once) is not one huge step whose ACKs overflow
    // the receive queue before they are read. Returns true when it stopped
    // there with more due: read the sockets, then call again at once.
    // Call when now >= next_deadline().
    bool on_timer(TimePoint now);
    static constexpr std::size_t kMaxDuePerStep = 1024;
    std::optional<TimePoint> next_deadline() const { return wheel_.next_wakeup(); }

    // New limits apply to new registrations; granted intervals are promises
    // the peers rely on, so existing sessions keep theirs. Reserves room for
    // max_peers first (see reserve()); if that throws, nothing changed.
    void set_limits(const PeerLimits& limits) {
        reserve(limits.max_peers);
        limits_ = limits;
        shedder_.set_busy_percent(limits.shed_busy_percent);
    }
    // Room for `peers` peers in the table and the timer wheel, taken at
    // construction and when max_peers grows: a table filling up to max_peers
    // never grows them, and a full one answers REJECT "server full", never
    // std::bad_alloc. Throws std::bad_alloc (nothing changed) if the memory
    // cannot be had.
    void reserve(std::size_t peers) {
        table_.reserve(peers);
        wheel_.reserve(peers);
    }

    // With keys, every KAP/1 datagram must carry a valid AUTH trailer under one
    // of them (anything else is dropped as unauthenticated and never answered),
    // and everything the server sends is signed with the active key. nullopt:
    // authentication off. Sessions are kept across a change.
    void set_auth(std::optional<kap::KeyRing> keys) { auth_ = std::move(keys); }
    bool auth_required() const { return auth_.has_value(); }
    const PeerLimits& limits() const { return limits_; }

    // Names taken by something else (the daemon's TCP targets): a REGISTER for one is
    // REJECTed with diag 3 (not permitted), a legacy registration dropped as legacy_refused.
    void set_reserved_names(std::function<bool(std::string_view)> reserved) {
        reserved_ = std::move(reserved);
    }

    // Says goodbye to every KAP/1 peer that is not gone already: BYE diag 5
    // (shutting down), or diag 8 (restarting) when the sessions are saved and
    // the next process will take them over.
    void shutdown(kap::Diag diag = kap::Diag::shutting_down);

    // The whole table, for the next process (server_restore.cpp). `listener_of`
    // names the bound address of a route's socket, which outlives socket ids.
    ServerSnapshot snapshot(TimePoint now,
                            const std::function<Address(std::uint32_t socket)>& listener_of) const;
    // Takes over the sessions of a snapshot saved `elapsed` ago; call before
    // the first datagram. Keeps the saved epoch, so peers see no restart.
    // Every restored live peer is probed within min(interval, 1 s) of `now`,
    // with a seq above any sent before; in-flight probes count as answered, so
    // a peer that died meanwhile is down one detection time after that probe.
    // No event is reported. `socket_for` maps a saved listener address to a
    // socket id (none: that peer is skipped). A snapshot older than
    // forget_after is refused with the reason.
    struct Restored {
        std::size_t peers = 0;
        std::size_t skipped = 0;  // no socket, duplicate, or over max_peers
    };
    Result<Restored, std::string> restore(
        const ServerSnapshot& snapshot, Duration elapsed, TimePoint now,
        const std::function<std::optional<std::uint32_t>(const Address& listener)>& socket_for);
    // Peers restored get their seq advanced by at least this much beyond what
    // the elapsed time can explain, for probes sent after the last save.
    static constexpr std::uint64_t kRestoreSeqMargin = 64;

    // For datagrams dropped before the core sees their bytes (e.g. oversized ones).
    void count_dropped_datagram(Drop d) {
        ++received_;
        count(d);
    }

    // The daemon may have lost datagrams addressed to it up to `now` (its
    // receive queue overflowed). A probe sent before that time and still
    // unanswered is then no evidence against its peer: it is not counted as
    // missed, up to kMaxWithheld probes in a row.
    // It counts towards shedding load too (note_loop_busy).
    void doubt_receive(TimePoint now) {
        doubt_unread(now);
        shedder_.note_overflow(now);
    }
    // Datagrams addressed to the daemon were left unread when probes fell
    // due (a receive queue deeper than one step reads): an ACK among them
    // would not count. The same doubt, without the overflow's shedding: a
    // queue of REGISTERs is a registration burst, and pacing answers it.
    void doubt_unread(TimePoint now) {
        if (now > receive_doubt_) receive_doubt_ = now;
    }
    // One loop iteration ending at `now` took `cpu` of the daemon's CPU time.
    // Over capacity (limits().shed_busy_percent), a REGISTER for a name the
    // table does not hold is answered REJECT diag 9 (busy) instead of being
    // challenged or admitted; known names are served as always. Below it,
    // newcomers are admitted at the pace the load leaves room for, and the
    // rest are answered busy too (core/load_shedder.hpp).
    void note_loop_busy(Duration cpu, TimePoint now) { shedder_.note_busy(cpu, now); }
    const LoadShedder& load() const { return shedder_; }
    // Registrations answered "busy" (REJECT diag 9), and legacy ones ignored, to shed load.
    std::uint64_t registrations_shed() const { return registrations_shed_; }
    // The daemon had no room to send some datagrams at `now` (a full socket
    // buffer, ENOBUFS): a probe sent at `now` or before and unanswered is no
    // evidence against its peer either, on the same terms as doubt_receive().
    void doubt_send(TimePoint now) { doubt_receive(now + Duration(1)); }
    // Unanswered probes not counted against their peers: because of
    // doubt_receive() or doubt_send(), or because the server itself sent the
    // probe so late (it was stopped or starved) that its peer had less than
    // half a probe step to answer before the verdict. Either way at most
    // kMaxWithheld in a row per peer, which extends that peer's detection by
    // as many probes.
    std::uint64_t verdicts_withheld() const { return verdicts_withheld_; }

    const PeerTable& peers() const { return table_; }
    const DropCounters& drops() const { return drops_; }
    std::uint64_t epoch() const { return epoch_; }
    std::uint64_t datagrams_received() const { return received_; }

private:
    using Slot = PeerTable::Slot;

    void on_register(const kap::Message& m, const Address& from, const Route& route, TimePoint now);
    // Over capacity, or no room left in this second's pace for a newcomer
    // probed every `interval`, and `name` is not in the table: counted, and true.
    bool shed_new_name(std::string_view name, Duration interval, bool first_contact, TimePoint now);
    void on_ack(const kap::Message& m, const Address& from, const Route& route, TimePoint now);
    void on_bye(const kap::Message& m, const Address& from, const Route& route, TimePoint now);
    struct NewPeer {
        std::string name;
        Protocol protocol;
        std::uint64_t incarnation;
        Address address;
        Route route;
        Duration interval;
        std::uint8_t probes;
    };
    Slot admit(NewPeer peer, TimePoint now);  // a new name: a new session
    void renew(Slot slot, Duration interval, std::uint8_t probes, const Address& to,
               const Route& route, TimePoint now);
    Slot kap1_session(std::uint32_t session) const;  // kNone for unknown and legacy sessions
    void acknowledge(Slot slot, std::uint64_t seq, std::optional<Duration> rtt, TimePoint now);
    void recover(Slot slot, TimePoint now);        // an ACK from a down peer
    void update_health(Slot slot, TimePoint now);  // up <-> degraded
    void on_due(Slot slot, TimePoint deadline, TimePoint now);
    void send_probe(Slot slot, TimePoint now);
    void answer_unknown_session(const Address& from, const Route& route, TimePoint now);
    bool allowed(const Address& from) const;
    // Sends a CHALLENGE or REJECT to a source whose address is not proven yet if
    // it has budget left; counts rate_limited if not.
    void handshake_reply(const Route& route, const Address& from, const kap::Message& m,
                         TimePoint now);
    bool handshake_budget_allows(const Address& from, TimePoint now);
    void reply(const Route& route, const Address& to, const kap::Message& m);
    // Moves the peer to `state` at `at` and reports `event`, its previous state filled in.
    void change_state(Slot slot, PeerState state, PeerEvent event, TimePoint at);
    void emit(const PeerEvent& event) { sink_.peer_event(event); }
    // The distance between two probes: the granted interval, or less on probation.
    static Duration probe_step(const Peer& p);
    Duration forget_after(const Peer& p) const;
    static std::uint8_t probe_budget(const Peer& p);
    void probe_down(Slot slot, TimePoint deadline, TimePoint now);
    bool host_full(const Address& host) const {
        return table_.on_host(host) >= limits_.max_per_host;
    }
    void schedule(Slot slot, TimePoint deadline);
    void forget(Slot slot);
    std::uint32_t new_session_id();
    TimePoint first_probe_time(Duration interval, TimePoint now);
    void count(Drop d) { ++drops_[static_cast<std::size_t>(d)]; }

    bool reserved(std::string_view name) const { return reserved_ && reserved_(name); }

    PeerLimits limits_;
    std::optional<kap::KeyRing> auth_;
    std::function<bool(std::string_view)> reserved_;
    RandomSource& random_;
    ServerSink& sink_;
    CookieJar cookies_;
    std::uint64_t epoch_;
    TimerWheel wheel_;
    PeerTable table_;
    DropCounters drops_{};
    std::uint64_t received_ = 0;
    TimePoint receive_doubt_{};
    std::uint64_t verdicts_withheld_ = 0;
    LoadShedder shedder_;
    std::uint64_t registrations_shed_ = 0;

    // Fixed-size, keyed: attackers choose the source addresses.
    ReplyBudget unknown_session_budget_;
    ReplyBudget handshake_budget_;
    std::uint32_t legacy_peers_ = 0;
};

}  // namespace keepalive
