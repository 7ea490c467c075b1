#include "daemon/tcp_target.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace keepalive {

TargetOutcome classify_failure(TargetPhase phase, int error) {
    const bool established = phase == TargetPhase::established;
    switch (error) {
        case 0:
            return {EventKind::left, PeerState::left, EventCause::closed_by_service, true};
        case ECONNRESET:
        case EPIPE:
            // A reset on an idle connection answers a keepalive probe: the host is
            // back but has forgotten the connection, i.e. it restarted.
            if (established)
                return {EventKind::restarted, PeerState::up, EventCause::reset_by_host, true};
            return {EventKind::down, PeerState::down, EventCause::connection_reset, false};
        case ETIMEDOUT:
            return {EventKind::down, PeerState::down,
                    established ? EventCause::no_answer_to_keepalives
                                : EventCause::no_answer_to_connects,
                    false};
        case EHOSTUNREACH:
        case ENETUNREACH:
        case EHOSTDOWN:
        case ENONET:
            return {EventKind::down, PeerState::down, EventCause::unreachable, false};
        case ECONNREFUSED:
            return {EventKind::down, PeerState::down, EventCause::connection_refused, false};
        default:
            return {EventKind::down, PeerState::down, EventCause::connection_failed, false};
    }
}

std::string failure_text(int error) {
    if (error == 0) return "closed by the service (FIN)";
    const char* name = strerrorname_np(error);
    return std::string(name != nullptr ? name : "error") + ": " + std::strerror(error);
}

Duration backoff_delay(unsigned failures, RandomSource& random) {
    using std::chrono::milliseconds;
    const unsigned doublings = std::min(failures > 0 ? failures - 1 : 0U, 5U);  // 32 s > cap
    const Duration base =
        std::min<Duration>(std::chrono::seconds(1) * (1U << doublings), kMaxBackoff);
    const auto ms =
        static_cast<std::uint64_t>(std::chrono::duration_cast<milliseconds>(base).count());
    // [3/4, 1] of base, in whole milliseconds.
    return milliseconds(ms - random.below(ms / 4 + 1));
}

namespace {

bool set_option(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value) == 0;
}

}  // namespace

Result<StartedConnect, int> start_connect(const TargetConfig& t) {
    const int family = t.address.family() == Address::Family::v4 ? AF_INET : AF_INET6;
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!fd) return Err{errno};
    // TCP_USER_TIMEOUT = idle + probes x interval also bounds the SYN retries and
    // any unacknowledged data. While keepalive probes are out it replaces
    // TCP_KEEPCNT as the abort rule, but at the same time (the last probe's
    // deadline) and with the same error (ETIMEDOUT), so the outcome is unchanged.
    const auto user_timeout_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(t.detection_time()).count();
    if (!set_option(fd.get(), SOL_SOCKET, SO_KEEPALIVE, 1) ||
        !set_option(fd.get(), IPPROTO_TCP, TCP_KEEPIDLE, static_cast<int>(t.idle.count())) ||
        !set_option(fd.get(), IPPROTO_TCP, TCP_KEEPINTVL, static_cast<int>(t.interval.count())) ||
        !set_option(fd.get(), IPPROTO_TCP, TCP_KEEPCNT, t.probes) ||
        !set_option(fd.get(), IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(user_timeout_ms)))
        return Err{errno};
    sockaddr_storage ss;
    const socklen_t len = t.address.to_sockaddr(ss);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) == 0)
        return StartedConnect{std::move(fd), true};
    if (errno == EINPROGRESS || errno == EINTR) return StartedConnect{std::move(fd), false};
    return Err{errno};
}

int take_socket_error(int fd) {
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0) return errno;
    return error;
}

std::optional<TcpFigures> tcp_figures(int fd) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) return std::nullopt;
    TcpFigures f;
    if (info.tcpi_rtt > 0) f.rtt = std::chrono::microseconds(info.tcpi_rtt);
    f.unanswered = info.tcpi_probes;
    return f;
}

}  // namespace keepalive
