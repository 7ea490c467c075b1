#include "daemon/daemon.hpp"

#include <fmt/ranges.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <csignal>
#include <stdexcept>

#include "daemon/status_json.hpp"
#include "daemon/textfile.hpp"

namespace keepalive {
namespace {

// Most datagrams handled per wake-up of one socket before the loop looks at
// the others (epoll is level-triggered, so the rest wait their turn).
constexpr int kBatchesPerWakeup = 8;

void notify(const std::string& state) {
    sd_notify(0, state.c_str());
}

std::string monotonic_usec(TimePoint now) {
    return fmt::format(
        "MONOTONIC_USEC={}",
        std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count());
}

}  // namespace

Daemon::Daemon(Config config, Logger& log, const ClockSource& clock, RandomSource& random)
    : config_(std::move(config)),
      log_(log),
      clock_(clock),
      loop_(clock),
      core_(config_.peers, random, *this, clock.now()),
      started_(clock.now()) {
    adopt_activated_sockets();
    if (auto r = reconcile_listeners(endpoints(config_)); !r) throw std::runtime_error(r.error());
    if (listeners_.empty()) throw std::runtime_error("no address to listen on");
    control_ = std::make_unique<ControlServer>(
        loop_, config_.control_socket, [this](std::string_view r) { return control_request(r); });

    wheel_timer_ = loop_.add_timer([this] {
        if (wheel_deadline_) {
            loop_lag_ = std::max(Duration::zero(), loop_.now() - *wheel_deadline_);
            loop_lag_max_ = std::max(loop_lag_max_, loop_lag_);
        }
        core_.on_timer(loop_.now());
        after_work();
    });
    watchdog_timer_ = loop_.add_timer([this] {
        notify("WATCHDOG=1");
        loop_.arm_timer(watchdog_timer_, loop_.now() + watchdog_period_);
    });
    metrics_timer_ = loop_.add_timer([this] { write_metrics_file(); });
    if (!config_.metrics.textfile.empty()) loop_.arm_timer(metrics_timer_, clock_.now());
    std::uint64_t watchdog_usec = 0;
    if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
        watchdog_period_ = std::chrono::microseconds(watchdog_usec / 2);
        loop_.arm_timer(watchdog_timer_, clock_.now() + watchdog_period_);
    }
    loop_.on_signal(SIGTERM, [this] { stop(); });
    loop_.on_signal(SIGINT, [this] { stop(); });
    loop_.on_signal(SIGHUP, [this] { reload(); });
}

Daemon::~Daemon() = default;

void Daemon::adopt_activated_sockets() {
    const int n = sd_listen_fds(1);
    if (n < 0) throw std::runtime_error("sd_listen_fds failed");
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_DGRAM, -1) <= 0) {
            log_.logf(LOG_WARNING, "ignoring inherited fd {}: not a datagram socket", fd);
            continue;
        }
        auto socket = UdpSocket::adopt(UniqueFd(fd));
        if (!socket) throw std::runtime_error(socket.error());
        log_.logf(LOG_INFO, "serving on {} (from systemd)", socket->local().to_string());
        add_listener(std::nullopt, std::move(*socket));
    }
}

std::vector<Daemon::Endpoint> Daemon::endpoints(const Config& config) {
    std::vector<Endpoint> out;
    for (const Address& a : config.listen) out.push_back({a, Kind::kap1});
    if (config.legacy.enable && config.legacy.address) {
        Address a = *config.legacy.address;
        a.set_port(config.legacy.register_port);
        out.push_back({a, Kind::legacy_register});
        a.set_port(config.legacy.probe_port);
        out.push_back({a, Kind::legacy_probe});
    }
    return out;
}

Result<bool, std::string> Daemon::reconcile_listeners(const std::vector<Endpoint>& wanted) {
    std::vector<std::pair<Endpoint, UdpSocket>> opened;
    for (const Endpoint& e : wanted) {
        // A socket passed by systemd for this very address already serves it:
        // binding again would fail with EADDRINUSE.
        const bool open = std::any_of(listeners_.begin(), listeners_.end(), [&](const auto& l) {
            return l.second.configured == e || (!l.second.configured && e.kind == Kind::kap1 &&
                                                l.second.socket.local() == e.address);
        });
        if (open) continue;
        auto socket = UdpSocket::bind(e.address);
        if (!socket) return Err{socket.error()};  // `opened` closes what this attempt bound
        opened.emplace_back(e, std::move(*socket));
    }
    for (auto it = listeners_.begin(); it != listeners_.end();) {
        const auto& configured = it->second.configured;
        if (configured && std::find(wanted.begin(), wanted.end(), *configured) == wanted.end()) {
            log_.logf(LOG_INFO, "no longer listening on {}", configured->address.to_string());
            flush(it->first);
            loop_.remove_fd(it->second.socket.fd());
            it = listeners_.erase(it);
        } else {
            ++it;
        }
    }
    for (auto& [address, socket] : opened) {
        log_.logf(LOG_INFO, "listening on {}", socket.local().to_string());
        add_listener(address, std::move(socket));
    }
    return true;
}

void Daemon::add_listener(std::optional<Endpoint> configured, UdpSocket socket) {
    const std::uint32_t id = next_listener_id_++;
    const int fd = socket.fd();
    listeners_.emplace(id, Listener{std::move(configured), std::move(socket)});
    loop_.add_fd(fd, EPOLLIN, [this, id](std::uint32_t) { on_readable(id); });
}

void Daemon::on_readable(std::uint32_t id) {
    auto it = listeners_.find(id);
    if (it == listeners_.end()) return;
    UdpSocket& socket = it->second.socket;
    const Kind kind = it->second.configured ? it->second.configured->kind : Kind::kap1;
    const auto probe_listener = legacy_probe_listener();
    const TimePoint now = loop_.now();
    for (int i = 0; i < kBatchesPerWakeup; ++i) {
        const std::size_t n = socket.receive_batch([&](const UdpSocket::Received& r) {
            if (r.truncated) {
                core_.count_drop(kind == Kind::kap1 ? Drop::bad_length : Drop::legacy_malformed);
                return;
            }
            switch (kind) {
                case Kind::kap1:
                    core_.on_datagram(r.data, r.from, Route{id, r.to}, now);
                    break;
                case Kind::legacy_register:
                    // Probes leave from the legacy probe socket (the server's IP:5002).
                    if (probe_listener)
                        core_.on_legacy_register(
                            r.data, r.from,
                            Route{*probe_listener, listeners_.at(*probe_listener).socket.local()},
                            config_.legacy.probe_port, now);
                    break;
                case Kind::legacy_probe:
                    core_.on_legacy_reply(r.data, r.from, now);
                    break;
            }
        });
        if (n < UdpSocket::kBatchSize) break;
    }
    after_work();
}

// Everything a handler produced leaves here, once per handler: batched
// datagrams, the wheel's next deadline, and at most one STATUS update.
void Daemon::after_work() {
    for (auto& [id, queue] : outbox_)
        if (!queue.empty()) flush(id);
    wheel_deadline_ = core_.next_deadline();
    loop_.arm_timer(wheel_timer_, wheel_deadline_);
    if (status_dirty_) notify_status();
}

void Daemon::flush(std::uint32_t id) {
    auto& queue = outbox_[id];
    if (queue.empty()) return;
    if (auto it = listeners_.find(id); it != listeners_.end())
        it->second.socket.send_batch(queue);
    else
        unroutable_ += queue.size();
    queue.clear();
}

void Daemon::send(const Route& route, const Address& to, std::span<const std::uint8_t> data) {
    auto& queue = outbox_[route.socket];
    OutDatagram& d = queue.emplace_back();
    d.to = to;
    d.from = route.local;
    d.size = static_cast<std::uint16_t>(std::min(data.size(), d.data.size()));
    std::copy_n(data.begin(), d.size, d.data.begin());
    if (queue.size() >= UdpSocket::kBatchSize) flush(route.socket);
}

void Daemon::peer_event(const PeerEvent& event) {
    ++events_[static_cast<std::size_t>(event.kind)];
    log_.peer_event(event);
    status_dirty_ = true;
}

void Daemon::notify_status() {
    notify("STATUS=" + summary_line(core_.peers().counts()));
    status_dirty_ = false;
}

void Daemon::reload() {
    const TimePoint now = loop_.now();
    notify("RELOADING=1\n" + monotonic_usec(now));
    log_.logf(LOG_INFO, "reloading {}", config_.source);
    auto fresh = load_config(config_.source);
    if (!fresh) {
        log_.logf(LOG_ERR, "reload failed, keeping the running configuration: {}",
                  fresh.error().to_string());
    } else if (auto r = reconcile_listeners(endpoints(*fresh)); !r) {
        log_.logf(LOG_ERR, "reload failed, keeping the running configuration: {}", r.error());
    } else {
        if (fresh->control_socket != config_.control_socket) {
            try {
                control_.reset();  // the old path is unlinked before the new one is bound
                control_ = std::make_unique<ControlServer>(
                    loop_, fresh->control_socket,
                    [this](std::string_view req) { return control_request(req); });
            } catch (const std::exception& e) {
                log_.logf(LOG_ERR, "control socket: {}", e.what());
            }
        }
        core_.set_limits(fresh->peers);
        const bool metrics_changed = fresh->metrics.textfile != config_.metrics.textfile ||
                                     fresh->metrics.interval != config_.metrics.interval;
        config_ = std::move(*fresh);
        if (metrics_changed)
            loop_.arm_timer(metrics_timer_, config_.metrics.textfile.empty()
                                                ? std::nullopt
                                                : std::optional<TimePoint>(now));
        log_.logf(LOG_INFO, "configuration reloaded: listening on {}",
                  fmt::join(listen_addresses(), ", "));
    }
    notify("READY=1");
    status_dirty_ = true;
    after_work();
}

void Daemon::stop() {
    if (stopping_) return;
    stopping_ = true;
    notify("STOPPING=1");
    log_.log(LOG_INFO, "stopping: saying goodbye to every peer");
    core_.shutdown();
    after_work();
}

std::optional<std::uint32_t> Daemon::legacy_probe_listener() const {
    for (const auto& [id, l] : listeners_)
        if (l.configured && l.configured->kind == Kind::legacy_probe) return id;
    return std::nullopt;
}

std::vector<std::string> Daemon::listen_addresses() const {
    std::vector<std::string> out;
    for (const auto& [id, l] : listeners_) {
        const bool legacy = l.configured && l.configured->kind != Kind::kap1;
        out.push_back(l.socket.local().to_string() + (legacy ? " (legacy)" : ""));
    }
    return out;
}

DaemonStats Daemon::stats() const {
    DaemonStats s;
    s.version = KEEPALIVE_VERSION;
    s.uptime_s = std::chrono::duration<double>(loop_.now() - started_).count();
    s.loop_lag_s = std::chrono::duration<double>(loop_lag_).count();
    s.loop_lag_max_s = std::chrono::duration<double>(loop_lag_max_).count();
    s.log_events_dropped = log_.suppressed();
    for (const auto& [id, l] : listeners_) s.send_errors += l.socket.send_errors();
    s.unroutable = unroutable_;
    s.events = events_;
    return s;
}

// Rewritten whole every interval; a failure is logged (rate-limited) and
// retried at the next interval, the previous file staying in place.
void Daemon::write_metrics_file() {
    if (config_.metrics.textfile.empty()) return;
    MetricsText text(core_, stats());
    auto r = replace_file(config_.metrics.textfile, [&](std::string& out) { return text.next(out); });
    if (!r)
        log_.log_limited("metrics", LOG_WARNING, "metrics textfile: " + r.error(), loop_.now());
    loop_.arm_timer(metrics_timer_, loop_.now() + config_.metrics.interval);
}

std::string Daemon::control_request(std::string_view request) {
    if (request == "metrics") return metrics_text(core_, stats());
    if (request == "peers") return peers_json(core_, loop_.now()).dump() + "\n";
    if (request == "status") {
        const DaemonInfo info{KEEPALIVE_VERSION, config_.source, listen_addresses(),
                              std::chrono::duration<double>(loop_.now() - started_).count()};
        auto j = status_json(core_, info);
        std::uint64_t send_errors = 0;
        for (const auto& [id, l] : listeners_) send_errors += l.socket.send_errors();
        j["daemon"]["send_errors"] = send_errors;
        j["daemon"]["unroutable"] = unroutable_;
        return j.dump() + "\n";
    }
    return nlohmann::json{{"error", "unknown request"}}.dump() + "\n";
}

int Daemon::run() {
    log_.logf(LOG_INFO, "keepalived {} ready: listening on {}", KEEPALIVE_VERSION,
              fmt::join(listen_addresses(), ", "));
    notify("READY=1");
    notify_status();
    // After READY nothing a peer sends may stop the daemon: a handler that
    // throws is logged (rate-limited) and the loop goes on.
    while (!stopping_) {
        try {
            loop_.run_once(std::nullopt);
        } catch (const std::exception& e) {
            log_.log_limited("handler", LOG_ERR, fmt::format("event handler failed: {}", e.what()),
                             clock_.now());
        }
    }
    return 0;
}

}  // namespace keepalive
