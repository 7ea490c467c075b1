// TargetSet: the configured TCP targets, one kernel-keepalive connection each,
// driven by the daemon's event loop. The kernel sends the probes; the set only
// wakes up when a connection is made or fails, and turns that into the same
// peer states and events as KAP/1 peers (protocol "tcp").
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/peer.hpp"
#include "core/peer_table.hpp"
#include "core/random.hpp"
#include "daemon/tcp_target.hpp"
#include "net/event_loop.hpp"

namespace keepalive {

class TargetSet {
public:
    struct Hooks {
        std::function<void(const PeerEvent&)> event;  // every state change, as for peers
        std::function<void()> done;                   // after each batch of events
    };

    TargetSet(EventLoop& loop, RandomSource& random, Hooks hooks);
    ~TargetSet();  // closes every connection without reporting events
    TargetSet(const TargetSet&) = delete;
    TargetSet& operator=(const TargetSet&) = delete;

    // Makes the set match `wanted`: new targets are reported `registered` and
    // connected; removed ones are closed and reported `forgotten`; a changed one
    // (address, idle, interval or probes) is reported `registered` again and
    // reconnects; the others are not touched.
    void apply(const std::vector<TargetConfig>& wanted);

    bool contains(std::string_view name) const { return targets_.find(name) != targets_.end(); }
    std::size_t size() const { return targets_.size(); }
    PeerCounts counts() const;

    // Rows for the peers list (status_json.hpp's peer_json plus TCP_INFO figures).
    nlohmann::json peer_rows(TimePoint now);
    // {"targets": [{"name", "address", "state", "connection", "idle_s", "interval_s", "probes",
    //   "detection_s", "since", "rtt_us", "missed", "last_error", "connects",
    //   "next_attempt_in"}, ...]}, by name.
    nlohmann::json targets_json(TimePoint now);

private:
    enum class Link : std::uint8_t { waiting, connecting, established };
    struct Target {
        TargetConfig config;
        Peer peer;
        PeerNameBuffer name;  // peer.name points in here
        UniqueFd fd;
        Link link = Link::waiting;
        std::optional<TimePoint> wake_at;  // next attempt (waiting) or give-up (connecting)
        unsigned failures = 0;             // consecutive failed attempts, for the backoff
        TimePoint connected_at{};
        std::uint64_t connects = 0;       // connections established
        std::optional<EventCause> cause;  // of the last state change
    };

    static std::string_view link_name(Link link);
    void connect(Target& t, TimePoint now);
    void on_io(Target& t, std::uint32_t events);
    void on_connected(Target& t, TimePoint now);
    void on_failure(Target& t, TargetPhase phase, int error, TimePoint now);
    void close(Target& t);
    void on_timer();
    void rearm();
    void refresh(Target& t);
    void set_state(Target& t, PeerState state, EventKind kind, EventCause cause, TimePoint now);
    // `detail`: for configuration_changed, the old configuration in words.
    void emit(Target& t, EventKind kind, std::optional<PeerState> previous, EventCause cause,
              std::string_view detail = {});

    EventLoop& loop_;
    RandomSource& random_;
    Hooks hooks_;
    EventLoop::TimerId timer_;
    std::map<std::string, std::unique_ptr<Target>, std::less<>> targets_;
};

}  // namespace keepalive
