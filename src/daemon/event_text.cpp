#include "daemon/event_text.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "core/duration.hpp"
#include "daemon/tcp_target.hpp"

namespace keepalive {
namespace {

using std::chrono::duration_cast;

std::string icmp_text(int error, const std::optional<Address>& reporter) {
    const std::string from = reporter ? " from " + reporter->host_string() : std::string();
    switch (error) {
        case ECONNREFUSED:
            return "host up, no agent (ICMP port unreachable" + from + ")";
        case EHOSTUNREACH:
            return "unreachable (ICMP host unreachable" + from + ")";
        case ENETUNREACH:
            return "unreachable (ICMP network unreachable" + from + ")";
        default:
            return fmt::format("ICMP error{}: {}", from, std::strerror(error));
    }
}

std::string loss_text(const HealthFigures& h) {
    return fmt::format("lost {} of the last {} probes", h.lost, h.window);
}

std::string rtt_text(Duration rtt) {
    return fmt::format("round trip {:.1f} ms",
                       std::chrono::duration<double, std::milli>(rtt).count());
}

// What is over the limit, loss first: "lost 11 of the last 33 probes, round trip 2.0 ms".
std::string degraded_text(const HealthFigures& h) {
    std::string out;
    if (h.loss_over) out = loss_text(h);
    if (h.rtt_over && h.rtt) {
        if (!out.empty()) out += ", ";
        out += rtt_text(*h.rtt);
    }
    return out;
}

// The peer's health in full: the loss window always, the round trip when measured.
std::string health_text(const HealthFigures& h) {
    std::string out = loss_text(h);
    if (h.rtt) out += ", " + rtt_text(*h.rtt);
    return out;
}

}  // namespace

std::string_view fixed_reason(EventCause cause) {
    switch (cause) {
        case EventCause::registered:
            return "registered";
        case EventCause::registered_legacy:
            return "registered (legacy protocol)";
        case EventCause::registered_again:
            return "registered again";
        case EventCause::restarted:
            return "restarted (new incarnation)";
        case EventCause::ack_received:
            return "ack received";
        case EventCause::goodbye:
            return "peer said goodbye";
        case EventCause::configured:
            return "configured";
        case EventCause::unconfigured:
            return "removed from the configuration";
        case EventCause::connected:
            return "connected";
        case EventCause::closed_by_service:
            return "closed by the service";
        case EventCause::reset_by_host:
            return "connection reset by the host";
        case EventCause::connection_reset:
            return "connection reset";
        case EventCause::no_answer_to_keepalives:
            return "no answer to keepalive probes";
        case EventCause::no_answer_to_connects:
            return "no answer to connection attempts";
        case EventCause::unreachable:
            return "unreachable";
        case EventCause::connection_refused:
            return "connection refused";
        case EventCause::connection_failed:
            return "connection failed";
        case EventCause::grant_changed:
        case EventCause::taken_over:
        case EventCause::moved:
        case EventCause::damping_ended:
        case EventCause::recovered:
        case EventCause::degraded:
        case EventCause::damped:
        case EventCause::unanswered:
        case EventCause::detection_expired:
        case EventCause::icmp_refused:
        case EventCause::forgotten:
        case EventCause::configuration_changed:
            break;
    }
    return "";
}

EventReason EventReason::of(const PeerEvent& e) {
    EventReason r;
    r.cause = e.cause;
    r.duration = e.duration;
    r.rtt = e.health.rtt;
    r.count = e.count;
    r.lost = e.health.lost;
    r.window = e.health.window;
    r.forgotten_in = e.previous ? *e.previous : e.peer.state;
    r.probes_before = e.probes_before;
    r.loss_over = e.health.loss_over;
    r.rtt_over = e.health.rtt_over;
    if (e.previous_address || e.error || !e.detail.empty())
        r.rare.make() = Rare{e.previous_address, e.error, std::string(e.detail)};
    return r;
}

std::string EventReason::text() const {
    const auto address = [&] {
        return rare && rare->previous_address ? rare->previous_address->to_string()
                                              : std::string("?");
    };
    const NetworkError* error = rare && rare->error ? &*rare->error : nullptr;
    const HealthFigures health{
        .lost = lost, .window = window, .rtt = rtt, .loss_over = loss_over, .rtt_over = rtt_over};
    switch (cause) {
        case EventCause::grant_changed:
            return fmt::format("registered again (was {} ms x {})",
                               duration_cast<milliseconds>(duration).count(), probes_before);
        case EventCause::taken_over:
            return fmt::format("taken over from {} by a new incarnation", address());
        case EventCause::moved:
            return "moved from " + address();
        case EventCause::damping_ended:
            return "ack received; damping ended after answering for " + format_duration(duration);
        case EventCause::recovered:
            return "recovered: " + health_text(health);
        case EventCause::degraded:
            return degraded_text(health);
        case EventCause::damped:
            return fmt::format(
                "damped: back {} times within {}; held down until it has answered for {}", count,
                format_duration(duration), format_duration(duration));
        case EventCause::unanswered:
            return fmt::format("{} probe{} unanswered", count, count == 1 ? "" : "s");
        case EventCause::detection_expired:
            if (error) return "detection time expired: " + network_error_text(*error);
            return "detection time expired";
        case EventCause::icmp_refused:
            return network_error_text(error ? *error : NetworkError{.error = ECONNREFUSED});
        case EventCause::forgotten:
            return fmt::format("forgotten after {} {}", format_duration(duration),
                               to_string(forgotten_in));
        case EventCause::configuration_changed:
            return fmt::format("configuration changed, was {}", rare ? rare->detail : "");
        default:
            return std::string(fixed_reason(cause));
    }
}

std::string event_reason(const PeerEvent& e) {
    return EventReason::of(e).text();
}

std::string describe(const PeerEvent& e) {
    const Peer& p = e.peer;
    const bool target = p.protocol == Protocol::tcp;
    const std::string who =
        fmt::format("{} {} ({})", target ? "target" : "peer", p.name, p.address.to_string());
    const std::string reason = event_reason(e);
    switch (e.kind) {
        case EventKind::registered:
            if (target)
                return fmt::format("{} {}: keepalive interval {} s, {} probes", who, reason,
                                   duration_cast<std::chrono::seconds>(p.interval).count(),
                                   p.probes);
            return fmt::format("{} registered: interval {} ms, {} probes{}", who,
                               duration_cast<milliseconds>(p.interval).count(), p.probes,
                               e.previous ? " (" + reason + ")" : std::string());
        case EventKind::restarted:
            if (target) return fmt::format("{} restarted: {}", who, reason);
            return fmt::format("{} restarted and registered again", who);
        case EventKind::moved:
        case EventKind::forgotten:
            return fmt::format("{} {}", who, reason);
        case EventKind::left:
            return fmt::format("{} has left: {}", who, reason);
        case EventKind::damped:
            return fmt::format("{} is flapping and held down: {}", who, reason);
        default:
            return fmt::format("{} is {}: {}", who, to_string(p.state), reason);
    }
}

std::string network_error_text(const NetworkError& error) {
    if (error.source == NetworkError::Source::socket) return failure_text(error.error);
    return icmp_text(error.error, error.reporter);
}

std::string summary_line(const PeerCounts& c) {
    // Degraded only when there are some, so the line stays as it was where
    // degraded detection is not configured.
    const std::string degraded = c.in(PeerState::degraded) > 0
                                     ? fmt::format(", {} degraded", c.in(PeerState::degraded))
                                     : std::string();
    return fmt::format("{} peer{}: {} up{}, {} suspect, {} down, {} left", c.total,
                       c.total == 1 ? "" : "s", c.in(PeerState::up), degraded,
                       c.in(PeerState::suspect), c.in(PeerState::down), c.in(PeerState::left));
}

}  // namespace keepalive
