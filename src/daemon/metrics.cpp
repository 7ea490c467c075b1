#include "daemon/metrics.hpp"

#include <fmt/format.h>

#include <chrono>
#include <type_traits>

#include "daemon/event_text.hpp"

namespace keepalive {
namespace {

using std::chrono::duration;

struct Family {
    const char* name;
    const char* type;
    const char* help;
};

// Per-peer families, each written over the whole table before the next:
// the text format wants every sample of a family together.
constexpr Family kPeerFamilies[] = {
    {"keepalived_peer_up", "gauge", "1 if the peer answers (up, suspect or degraded), else 0."},
    {"keepalived_peer_state", "gauge", "1 for the state the peer is in, 0 for the others."},
    {"keepalived_peer_rtt_seconds", "gauge", "Round-trip time of the last answered probe."},
    {"keepalived_peer_missed_probes", "gauge", "Consecutive unanswered probes."},
    {"keepalived_peer_probes_sent_total", "counter", "Probes sent in the current session."},
    {"keepalived_peer_acks_received_total", "counter",
     "Valid ACKs received in the current session."},
    {"keepalived_peer_state_changes_total", "counter", "State changes since the peer registered."},
    {"keepalived_peer_interval_seconds", "gauge", "Granted probe interval."},
};
constexpr std::size_t kPeerFamilyCount = std::size(kPeerFamilies);

void header(std::string& out, const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// Label values are escaped as the format requires, although peer names cannot
// hold any of these characters today.
std::string label(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (const char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

}  // namespace

MetricsText::MetricsText(const ServerCore& core, DaemonStats stats)
    : core_(core), stats_(std::move(stats)) {}

void MetricsText::daemon_families(std::string& out) const {
    auto it = std::back_inserter(out);
    // A family of one unlabelled sample: its header, then its value.
    const auto scalar = [&](const char* name, const char* type, const char* help, auto value) {
        header(out, name, type, help);
        if constexpr (std::is_floating_point_v<decltype(value)>)
            fmt::format_to(it, "{} {:.6f}\n", name, value);
        else
            fmt::format_to(it, "{} {}\n", name, value);
    };
    const auto event_count = [&](EventKind k) { return stats_.events[static_cast<std::size_t>(k)]; };

    header(out, "keepalived_build_info", "gauge", "The running version.");
    fmt::format_to(it, "keepalived_build_info{{version=\"{}\"}} 1\n", label(stats_.version));
    scalar("keepalived_uptime_seconds", "gauge", "Time since the daemon started.", stats_.uptime_s);

    const PeerCounts& c = core_.peers().counts();
    header(out, "keepalived_peers", "gauge", "Peers in the table, by state.");
    for (std::size_t s = 0; s < kPeerStateCount; ++s)
        fmt::format_to(it, "keepalived_peers{{state=\"{}\"}} {}\n",
                       to_string(static_cast<PeerState>(s)), c.by_state[s]);
    scalar("keepalived_peers_max", "gauge", "The configured max_peers.", core_.limits().max_peers);

    scalar("keepalived_registrations_total", "counter",
           "Registrations of new peers and restarted ones since start.",
           event_count(EventKind::registered) + event_count(EventKind::restarted));
    header(out, "keepalived_peer_events_total", "counter", "Peer events since start, by kind.");
    for (std::size_t k = 0; k < kEventKindCount; ++k)
        fmt::format_to(it, "keepalived_peer_events_total{{kind=\"{}\"}} {}\n",
                       to_string(static_cast<EventKind>(k)), stats_.events[k]);

    scalar("keepalived_datagrams_received_total", "counter", "KAP/1 datagrams received.",
           core_.datagrams_received());
    header(out, "keepalived_drops_total", "counter",
           "Datagrams dropped without acting on them, by reason.");
    for (std::size_t d = 0; d < kDropCount; ++d)
        fmt::format_to(it, "keepalived_drops_total{{reason=\"{}\"}} {}\n",
                       to_string(static_cast<Drop>(d)), core_.drops()[d]);
    scalar("keepalived_registrations_shed_total", "counter",
           "New registrations answered busy (REJECT diag 9) to shed load.",
           core_.registrations_shed());
    scalar("keepalived_shedding", "gauge",
           "1 while the daemon is over capacity and sheds new registrations.",
           core_.load().shedding() ? 1 : 0);
    scalar("keepalived_send_errors_total", "counter", "Datagrams the kernel refused to send.",
           stats_.send_errors);
    scalar("keepalived_unroutable_total", "counter", "Datagrams for a socket closed by a reload.",
           stats_.unroutable);

    scalar("keepalived_event_seq", "gauge",
           "Sequence number of the latest peer event (keepalivectl watch).", stats_.last_event_seq);
    scalar("keepalived_watchers", "gauge", "Clients of keepalivectl watch.", stats_.watchers);
    scalar("keepalived_hooks_running", "gauge", "Hook commands running now.", stats_.hooks_running);
    scalar("keepalived_hooks_pending", "gauge", "Hook runs queued behind others.",
           stats_.hooks_pending);
    scalar("keepalived_hooks_started_total", "counter", "Hook commands started.",
           stats_.hooks_started);
    scalar("keepalived_hooks_dropped_total", "counter",
           "Hook runs dropped because too many were queued.", stats_.hooks_dropped);
    scalar("keepalived_loop_lag_seconds", "gauge", "How late the event loop ran the last due timer.",
           stats_.loop_lag_s);
    scalar("keepalived_loop_lag_max_seconds", "gauge", "The largest loop lag since start.",
           stats_.loop_lag_max_s);
    scalar("keepalived_log_events_dropped_total", "counter",
           "Log messages suppressed by rate limiting.", stats_.log_events_dropped);
}

void MetricsText::peer_sample(std::string& out, const Peer& p) const {
    auto it = std::back_inserter(out);
    const std::string name = label(p.name);
    switch (family_) {
        case 0:
            fmt::format_to(it, "keepalived_peer_up{{name=\"{}\"}} {}\n", name,
                           answering(p.state) ? 1 : 0);
            break;
        case 1:
            for (std::size_t s = 0; s < kPeerStateCount; ++s) {
                const auto state = static_cast<PeerState>(s);
                fmt::format_to(it, "keepalived_peer_state{{name=\"{}\",state=\"{}\"}} {}\n", name,
                               to_string(state), p.state == state ? 1 : 0);
            }
            break;
        case 2:
            if (p.rtt)
                fmt::format_to(it, "keepalived_peer_rtt_seconds{{name=\"{}\"}} {:.6f}\n", name,
                               duration<double>(*p.rtt).count());
            break;
        case 3:
            fmt::format_to(it, "keepalived_peer_missed_probes{{name=\"{}\"}} {}\n", name, p.missed);
            break;
        case 4:
            fmt::format_to(it, "keepalived_peer_probes_sent_total{{name=\"{}\"}} {}\n", name,
                           p.probes_sent);
            break;
        case 5:
            fmt::format_to(it, "keepalived_peer_acks_received_total{{name=\"{}\"}} {}\n", name,
                           p.acks_received);
            break;
        case 6:
            fmt::format_to(it, "keepalived_peer_state_changes_total{{name=\"{}\"}} {}\n", name,
                           p.state_changes);
            break;
        case 7:
            fmt::format_to(it, "keepalived_peer_interval_seconds{{name=\"{}\"}} {:.3f}\n", name,
                           duration<double>(p.interval).count());
            break;
    }
}

bool MetricsText::next(std::string& out, std::size_t peers) {
    if (!daemon_done_) {
        daemon_families(out);
        daemon_done_ = true;
        return true;
    }
    if (family_ >= kPeerFamilyCount) return false;
    const PeerTable& table = core_.peers();
    if (!header_done_) {
        const Family& f = kPeerFamilies[family_];
        header(out, f.name, f.type, f.help);
        header_done_ = true;
    }
    // Bounded work per piece even on a sparse table: for_each_from stops after
    // a few empty slots per peer asked for.
    slot_ = table.for_each_from(slot_, peers,
                                [&](PeerTable::Slot, const Peer& p) { peer_sample(out, p); });
    if (slot_ == PeerTable::kNone) {
        ++family_;
        slot_ = 0;
        header_done_ = false;
    }
    return true;
}

std::string metrics_text(const ServerCore& core, const DaemonStats& stats) {
    MetricsText text(core, stats);
    std::string out;
    while (text.next(out)) {
    }
    return out;
}

}  // namespace keepalive
