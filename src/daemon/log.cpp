#include "daemon/log.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace keepalive {

std::optional<LogTarget> parse_log_target(std::string_view text) {
    if (text == "auto") return LogTarget::automatic;
    if (text == "journal") return LogTarget::journal;
    if (text == "stderr") return LogTarget::stderr_;
    return std::nullopt;
}

LogTarget resolve_log_target(LogTarget requested) {
    if (requested != LogTarget::automatic) return requested;
    const char* stream = std::getenv("JOURNAL_STREAM");
    struct stat st {};
    if (stream == nullptr || fstat(STDERR_FILENO, &st) != 0) return LogTarget::stderr_;
    unsigned long long dev = 0;
    unsigned long long ino = 0;
    if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return LogTarget::stderr_;
    return (dev == st.st_dev && ino == st.st_ino) ? LogTarget::journal : LogTarget::stderr_;
}

std::string_view message_id(EventKind kind) {
    switch (kind) {
        case EventKind::registered:
            return "7753e1932bca402b9b9dc336d0badeea";
        case EventKind::up:
            return "e6f068336d48433d9b5a7e3f9c47d0ba";
        case EventKind::suspect:
            return "681e42ee9b684060b35bd08b8e0f256d";
        case EventKind::down:
            return "16fad6aa28e14ede845df6fa5bf323ea";
        case EventKind::left:
            return "a4fdb73540bd491ca24bb6c0daf2aee6";
        case EventKind::restarted:
            return "eb433235029c452fab15d16e033d497c";
        case EventKind::moved:
            return "5878ae0a247145588f6878ad8ad05d87";
        case EventKind::forgotten:
            return "ad0d0b1f76b649fcb1b5cd28fdcf6571";
        case EventKind::degraded:
            return "c86b2b0557154dac849017bc47d89ce4";
        case EventKind::damped:
            return "2a93b7ac71224af19fd81514b5d73931";
    }
    return "";
}

int event_priority(EventKind kind) {
    switch (kind) {
        case EventKind::down:
            return LOG_WARNING;
        case EventKind::suspect:
        case EventKind::degraded:
            return LOG_NOTICE;
        case EventKind::damped:
            return LOG_WARNING;
        default:
            return LOG_INFO;
    }
}

namespace {

std::string_view state_after(const PeerEvent& e) {
    return e.kind == EventKind::forgotten ? "forgotten" : to_string(e.peer.state);
}

}  // namespace

Logger::Logger(LogTarget target)
    : target_(resolve_log_target(target)),
      writer_(target_ == LogTarget::journal ? LogWriter::Kind::journal : LogWriter::Kind::stderr_) {
}

void Logger::log(int priority, std::string_view message) {
    if (target_ == LogTarget::journal) {
        writer_.write(journal_datagram(
            {{"MESSAGE", std::string(message)}, {"PRIORITY", std::to_string(priority)}}));
        return;
    }
    writer_.write(fmt::format("<{}>{}\n", priority, message));
}

void Logger::log_limited(std::string_view key, int priority, std::string_view message,
                         TimePoint now) {
    constexpr auto kPeriod = std::chrono::seconds(10);
    Limiter* l = nullptr;
    for (auto& candidate : limiters_)
        if (candidate.key == key) l = &candidate;
    if (l == nullptr) l = &limiters_.emplace_back(Limiter{std::string(key), {}, 0});
    if (l->last != TimePoint{} && now - l->last < kPeriod) {
        ++l->suppressed;
        ++suppressed_;
        return;
    }
    l->last = now;
    if (l->suppressed > 0)
        log(priority, fmt::format("{} ({} similar messages suppressed)", message, l->suppressed));
    else
        log(priority, message);
    l->suppressed = 0;
}

void Logger::peer_event(const PeerEvent& e) {
    const Peer& p = e.peer;
    const int priority = event_priority(e.kind);
    const std::string message = describe(e);
    if (target_ != LogTarget::journal) {
        log(priority, message);
        return;
    }
    std::vector<std::pair<std::string_view, std::string>> fields;
    fields.reserve(17);
    fields.emplace_back("MESSAGE", message);
    fields.emplace_back("PRIORITY", std::to_string(priority));
    fields.emplace_back("MESSAGE_ID", std::string(message_id(e.kind)));
    fields.emplace_back("PEER_NAME", p.name);
    fields.emplace_back("PEER_ADDRESS", p.address.to_string());
    fields.emplace_back("PEER_STATE", std::string(state_after(e)));
    fields.emplace_back("PEER_PREVIOUS_STATE",
                        e.previous ? std::string(to_string(*e.previous)) : std::string());
    fields.emplace_back("PEER_SESSION", fmt::format("{:08x}", p.session));
    fields.emplace_back(
        "PEER_INTERVAL_MSEC",
        std::to_string(std::chrono::duration_cast<milliseconds>(p.interval).count()));
    fields.emplace_back("PEER_PROBES", std::to_string(p.probes));
    fields.emplace_back("PEER_MISSED", std::to_string(p.missed));
    if (p.rtt)
        fields.emplace_back(
            "PEER_RTT_USEC",
            std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(*p.rtt).count()));
    fields.emplace_back("PEER_REASON", event_reason(e));
    if (e.previous_address)
        fields.emplace_back("PEER_PREVIOUS_ADDRESS", e.previous_address->to_string());
    fields.emplace_back("PEER_PROTOCOL", std::string(to_string(p.protocol)));
    fields.emplace_back("PEER_EVENT", std::string(to_string(e.kind)));
    writer_.write(journal_datagram(fields));
}

}  // namespace keepalive
