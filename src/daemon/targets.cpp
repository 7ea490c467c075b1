#include "daemon/targets.hpp"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>

#include "daemon/event_text.hpp"
#include "daemon/status_json.hpp"

namespace keepalive {
namespace {

using std::chrono::duration;
using std::chrono::duration_cast;
using std::chrono::microseconds;

// Bytes read (and dropped) per wake-up from a service that talks, e.g. a
// banner: bounded so that a chatty service cannot hold the loop.
constexpr std::size_t kReadBudget = 64 * 1024;
// A connection that lived this long was a good one: the next one after it
// ends is tried at once rather than after a backoff.
constexpr Duration kStableConnection = std::chrono::seconds(30);

// Each target holds a descriptor, and the usual soft limit (1024) is below
// what a thousand targets need: raise it toward the hard limit (best effort;
// a target that cannot get a socket is down with EMFILE as its last error).
void make_room_for_descriptors(std::size_t targets) {
    constexpr rlim_t kForEverythingElse = 256;
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
    const rlim_t wanted = std::min<rlim_t>(targets + kForEverythingElse, limit.rlim_max);
    if (limit.rlim_cur >= wanted) return;
    limit.rlim_cur = wanted;
    setrlimit(RLIMIT_NOFILE, &limit);
}

std::string describe_config(const TargetConfig& c) {
    return fmt::format("{}, idle {}s, interval {}s x {}", c.address.to_string(), c.idle.count(),
                       c.interval.count(), c.probes);
}

}  // namespace

std::string_view TargetSet::link_name(Link link) {
    switch (link) {
        case Link::waiting:
            return "waiting";
        case Link::connecting:
            return "connecting";
        case Link::established:
            return "established";
    }
    return "?";
}

TargetSet::TargetSet(EventLoop& loop, RandomSource& random, Hooks hooks)
    : loop_(loop), random_(random), hooks_(std::move(hooks)) {
    timer_ = loop_.add_timer([this] { on_timer(); });
}

TargetSet::~TargetSet() {
    for (auto& [name, t] : targets_) close(*t);
    loop_.arm_timer(timer_, std::nullopt);
}

void TargetSet::apply(const std::vector<TargetConfig>& wanted) {
    const TimePoint now = loop_.now();
    make_room_for_descriptors(wanted.size());
    for (auto it = targets_.begin(); it != targets_.end();) {
        const bool kept = std::any_of(wanted.begin(), wanted.end(),
                                      [&](const TargetConfig& c) { return c.name == it->first; });
        if (kept) {
            ++it;
            continue;
        }
        Target& t = *it->second;
        close(t);
        emit(t, EventKind::forgotten, t.peer.state, EventCause::unconfigured);
        it = targets_.erase(it);
    }
    for (const TargetConfig& c : wanted) {
        auto it = targets_.find(c.name);
        if (it == targets_.end()) {
            auto t = std::make_unique<Target>();
            t->config = c;
            t->peer.name = t->name.assign(t->config.name);
            t->peer.protocol = Protocol::tcp;
            t->peer.address = c.address;
            t->peer.interval = c.interval;
            t->peer.probes = c.probes;
            // Not known to be up until the first connection is made.
            t->peer.state = PeerState::suspect;
            t->peer.since = now;
            Target& ref = *targets_.emplace(c.name, std::move(t)).first->second;
            emit(ref, EventKind::registered, std::nullopt, EventCause::configured);
            connect(ref, now);
        } else if (it->second->config != c) {
            Target& t = *it->second;
            const std::string was = describe_config(t.config);
            close(t);
            t.config = c;
            t.peer.name = t.name.assign(t.config.name);
            t.peer.address = c.address;
            t.peer.interval = c.interval;
            t.peer.probes = c.probes;
            t.failures = 0;
            emit(t, EventKind::registered, t.peer.state, EventCause::configuration_changed, was);
            connect(t, now);
        }
    }
    rearm();
    if (hooks_.done) hooks_.done();
}

PeerCounts TargetSet::counts() const {
    PeerCounts c;
    for (const auto& [name, t] : targets_) {
        ++c.total;
        ++c.by_state[static_cast<std::size_t>(t->peer.state)];
    }
    return c;
}

void TargetSet::connect(Target& t, TimePoint now) {
    t.wake_at.reset();
    auto started = start_connect(t.config);
    if (!started) {
        on_failure(t, TargetPhase::connecting, started.error(), now);
        return;
    }
    t.fd = std::move(started->fd);
    Target* target = &t;  // owned by targets_ through a unique_ptr: its address is stable
    loop_.add_fd(t.fd.get(), EPOLLOUT | EPOLLIN | EPOLLRDHUP,
                 [this, target](std::uint32_t events) { on_io(*target, events); });
    if (started->connected) {
        on_connected(t, now);
        return;
    }
    t.link = Link::connecting;
    // The kernel gives up on the SYNs at the same bound (TCP_USER_TIMEOUT); this
    // deadline only makes sure the attempt ends.
    t.wake_at = now + t.config.detection_time() + std::chrono::milliseconds(500);
}

void TargetSet::on_io(Target& t, std::uint32_t events) {
    const TimePoint now = loop_.now();
    if (t.link == Link::connecting) {
        const int error = take_socket_error(t.fd.get());
        if (error != 0)
            on_failure(t, TargetPhase::connecting, error, now);
        else if (events & (EPOLLOUT | EPOLLIN))
            on_connected(t, now);
    } else if (t.link == Link::established) {
        if (events & EPOLLERR) {
            const int error = take_socket_error(t.fd.get());
            on_failure(t, TargetPhase::established, error != 0 ? error : ECONNRESET, now);
        } else {
            // Read and drop what the service says; the target is watched, not served.
            std::array<char, 4096> buf;
            for (std::size_t total = 0; total < kReadBudget;) {
                const ssize_t n = ::recv(t.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
                if (n > 0) {
                    total += static_cast<std::size_t>(n);
                    continue;
                }
                if (n == 0) {
                    on_failure(t, TargetPhase::established, 0, now);
                } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    on_failure(t, TargetPhase::established, errno, now);
                }
                break;
            }
        }
    }
    rearm();
    if (hooks_.done) hooks_.done();
}

void TargetSet::on_connected(Target& t, TimePoint now) {
    t.link = Link::established;
    t.wake_at.reset();
    t.connected_at = now;
    t.failures = 0;
    ++t.connects;
    t.peer.missed = 0;
    loop_.modify_fd(t.fd.get(), EPOLLIN | EPOLLRDHUP);
    refresh(t);
    if (t.peer.state != PeerState::up)
        set_state(t, PeerState::up, EventKind::up, EventCause::connected, now);
}

void TargetSet::on_failure(Target& t, TargetPhase phase, int error, TimePoint now) {
    const bool was_established = t.link == Link::established;
    if (was_established) refresh(t);
    close(t);
    const TargetOutcome o = classify_failure(phase, error);
    t.peer.rare.make().last_error = NetworkError{
        .source = NetworkError::Source::socket, .error = error, .reporter = {}, .at = now};
    if (error == ETIMEDOUT && was_established) t.peer.missed = t.config.probes;

    switch (o.event) {
        case EventKind::restarted:
        case EventKind::left: {
            const PeerState previous = t.peer.state;
            t.peer.state = o.state;
            t.peer.since = now;
            t.cause = o.cause;
            emit(t, o.event, previous, o.cause);
            break;
        }
        default:
            // Down once, and again only when the reason changes (e.g. from no
            // answer to unreachable): a retry failing the same way says nothing new.
            if (t.peer.state != PeerState::down || t.cause != o.cause)
                set_state(t, PeerState::down, EventKind::down, o.cause, now);
            break;
    }
    // The host answered after a good long connection: try again at once.
    // Anything else (a service that closes at once included) backs off.
    if (o.host_answered && was_established && now - t.connected_at >= kStableConnection) {
        t.failures = 0;
        t.wake_at = now;
    } else {
        t.wake_at = now + backoff_delay(++t.failures, random_);
    }
}

void TargetSet::close(Target& t) {
    if (t.fd) {
        loop_.remove_fd(t.fd.get());
        t.fd.reset();
    }
    t.link = Link::waiting;
    t.wake_at.reset();
}

void TargetSet::on_timer() {
    const TimePoint now = loop_.now();
    for (auto& [name, t] : targets_) {
        if (!t->wake_at || *t->wake_at > now) continue;
        if (t->link == Link::connecting)
            on_failure(*t, TargetPhase::connecting, ETIMEDOUT, now);
        else if (t->link == Link::waiting)
            connect(*t, now);
    }
    rearm();
    if (hooks_.done) hooks_.done();
}

// One loop timer for all targets, set to the earliest wake-up. A scan per
// connection event is cheap next to the syscalls of that event.
void TargetSet::rearm() {
    std::optional<TimePoint> next;
    for (const auto& [name, t] : targets_)
        if (t->wake_at && (!next || *t->wake_at < *next)) next = t->wake_at;
    loop_.arm_timer(timer_, next);
}

void TargetSet::refresh(Target& t) {
    if (t.link != Link::established || !t.fd) return;
    if (const auto f = tcp_figures(t.fd.get())) {
        if (f->rtt) t.peer.rtt = f->rtt;
        t.peer.missed = f->unanswered;
    }
}

void TargetSet::set_state(Target& t, PeerState state, EventKind kind, EventCause cause,
                          TimePoint now) {
    const PeerState previous = t.peer.state;
    t.peer.state = state;
    t.peer.since = now;
    t.cause = cause;
    emit(t, kind, previous, cause);
}

void TargetSet::emit(Target& t, EventKind kind, std::optional<PeerState> previous, EventCause cause,
                     std::string_view detail) {
    if (hooks_.event)
        hooks_.event(PeerEvent{
            .kind = kind, .previous = previous, .peer = t.peer, .cause = cause, .detail = detail});
}

nlohmann::json TargetSet::peer_rows(TimePoint now) {
    auto rows = nlohmann::json::array();
    for (auto& [name, t] : targets_) {
        refresh(*t);
        rows.push_back(peer_json(t->peer, now));
    }
    return rows;
}

nlohmann::json TargetSet::targets_json(TimePoint now) {
    auto list = nlohmann::json::array();
    for (auto& [name, tp] : targets_) {
        Target& t = *tp;
        refresh(t);
        const Peer& p = t.peer;
        list.push_back({
            {"name", p.name.view()},
            {"address", p.address.to_string()},
            {"state", to_string(p.state)},
            {"reason", t.cause ? fixed_reason(*t.cause) : std::string_view()},
            {"connection", link_name(t.link)},
            {"idle_s", t.config.idle.count()},
            {"interval_s", t.config.interval.count()},
            {"probes", t.config.probes},
            {"detection_s", t.config.detection_time().count()},
            {"since", std::max(0.0, duration<double>(now - p.since).count())},
            {"rtt_us", p.rtt ? nlohmann::json(duration_cast<microseconds>(*p.rtt).count())
                             : nlohmann::json(nullptr)},
            {"missed", p.missed},
            {"last_error", !p.last_error() ? nlohmann::json(nullptr)
                                         : nlohmann::json(network_error_text(*p.last_error()))},
            {"connects", t.connects},
            {"next_attempt_in",
             t.link == Link::waiting && t.wake_at
                 ? nlohmann::json(std::max(0.0, duration<double>(*t.wake_at - now).count()))
                 : nlohmann::json(nullptr)},
        });
    }
    return {{"targets", std::move(list)}};
}

}  // namespace keepalive
