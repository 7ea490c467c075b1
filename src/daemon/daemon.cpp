#include "daemon/daemon.hpp"

#include <fmt/ranges.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include "core/duration.hpp"
#include "daemon/control_request.hpp"
#include "daemon/event_text.hpp"
#include "daemon/status_json.hpp"
#include "daemon/textfile.hpp"

namespace keepalive {
namespace {

// Most datagrams handled per wake-up of one socket before the loop looks at
// the others (epoll is level-triggered, so the rest wait their turn).
constexpr int kBatchesPerWakeup = 8;

// Batches read from a socket still backlogged when probes fall due: enough
// to empty a full receive queue of the 1 MiB UdpSocket asks. A deeper one
// (a socket passed by systemd with a larger ReceiveBuffer=) is left for the
// next step, and the verdicts of this one are doubted: a step that read a
// whole 8 MiB queue took up to 270 ms of REGISTERs in a 1 M registration.
constexpr int kDrainBatches = 64;

// STATUS= is sent again for a worse loop lag only past this much more.
constexpr Duration kLagReportStep = std::chrono::milliseconds(1);

// How soon log records the journal (or stderr) could not take are tried again.
constexpr Duration kLogRetry = std::chrono::milliseconds(20);
// Lines about shedding load (over capacity / back under it): at most one per period.
constexpr Duration kShedLogPeriod = std::chrono::seconds(10);

// The wheel timer fires on a grid of this step, at most once a step: the
// deadlines that fall close together (many peers) are served by one wake-up,
// up to one step late. A probe and the verdict it leads to are late by the
// same amount when the interval is a whole number of steps, so detection is
// not. Wake-ups per second then stop growing with the number of peers.
constexpr Duration kWheelStep = std::chrono::milliseconds(5);

// With this many peers or more, the sockets are read on the wheel's grid too
// (at most a step after a datagram came) instead of on each datagram's
// arrival. ACKs count the same, but RTTs read up to a step long, which is why
// small installations keep reading at once.
constexpr std::size_t kDeferReadsAbove = 1000;

// The first step of the grid strictly after `t`.
TimePoint step_after(TimePoint t) {
    return TimePoint{(t.time_since_epoch() / kWheelStep + 1) * kWheelStep};
}

// `t` if it is on the grid, else the next step.
TimePoint step_at_or_after(TimePoint t) {
    return t.time_since_epoch() % kWheelStep == Duration::zero() ? t : step_after(t);
}

// CLOCK_MONOTONIC, whatever clock the daemon was given: what a step took in
// real time, waits for the disk included.
Duration wall_time() {
    return read_clock(CLOCK_MONOTONIC);
}

// CLOCK_BOOTTIME minus CLOCK_MONOTONIC (see SleepDetector); nullopt when the
// thread was held up between the readings for too long to trust them.
std::optional<Duration> time_asleep() {
    const Duration before = read_clock(CLOCK_MONOTONIC);
    const Duration boot = read_clock(CLOCK_BOOTTIME);
    if (read_clock(CLOCK_MONOTONIC) - before > std::chrono::milliseconds(1)) return std::nullopt;
    return boot - before;
}

// The peer table is saved this long after the first change (memfd, and the
// state file without an fd store), so a burst of changes is one write.
constexpr Duration kStateSaveDelay = std::chrono::seconds(2);
// ... and at least this often, so that a saved copy is never older than
// forget_after (which would make the next process ignore it).
constexpr Duration kStateRefresh = std::chrono::seconds(60);
// How often the end of a save (fsync and rename, on a helper thread) is checked.
constexpr Duration kSavePoll = std::chrono::milliseconds(5);

// fd-store names of the sockets the daemon bound itself, by kind; the rest of
// the name makes each one unique (FDSTOREREMOVE removes by name).
constexpr std::pair<std::string_view, int> kStoredSocketPrefixes[] = {
    {"kap1-", 0}, {"legreg-", 1}, {"legprobe-", 2}};

std::string state_file_path(const Config& config) {
    if (config.state_file) return *config.state_file;
    // systemd sets STATE_DIRECTORY for StateDirectory= (colon-separated when several).
    const char* dir = std::getenv("STATE_DIRECTORY");
    if (dir == nullptr || *dir == '\0') return {};
    const std::string first(dir, std::strcspn(dir, ":"));
    return first + "/state";
}

// Under a service manager that keeps an fd store for us: $FDSTORE is its
// size (set by systemd 254 and later, and by keepalived.service for older ones).
bool fd_store_available() {
    const char* notify_socket = std::getenv("NOTIFY_SOCKET");
    const char* fdstore = std::getenv("FDSTORE");
    return notify_socket != nullptr && *notify_socket != '\0' && fdstore != nullptr &&
           std::atoi(fdstore) > 0;
}

std::optional<kap::KeyRing> auth_keys(const AuthConfig& auth) {
    if (auth.mode == AuthMode::off) return std::nullopt;
    return auth.keys;
}

std::string auth_summary(const AuthConfig& auth) {
    if (auth.mode == AuthMode::off) return "authentication off";
    return fmt::format("authentication required: {} key{} from {}, sending with key {}",
                       auth.keys.size(), auth.keys.size() == 1 ? "" : "s", auth.keys_file,
                       auth.keys.active()->id);
}

nlohmann::json auth_json(const AuthConfig& auth) {
    if (auth.mode == AuthMode::off) return {{"mode", "off"}};
    return {{"mode", "required"},
            {"keys_file", auth.keys_file},
            {"keys", auth.keys.size()},
            {"active_key", auth.keys.active()->id}};
}

std::string monotonic_usec(TimePoint now) {
    return fmt::format(
        "MONOTONIC_USEC={}",
        std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count());
}

class SystemdNotifier final : public sys::Notifier {
public:
    int notify(const std::string& state) override { return sd_notify(0, state.c_str()); }
    int notify_with_fds(const std::string& state, std::span<const int> fds) override {
        return sd_pid_notify_with_fds(0, 0, state.c_str(), fds.data(),
                                      static_cast<unsigned>(fds.size()));
    }
};

}  // namespace

sys::Notifier& systemd_notifier() {
    static SystemdNotifier notifier;
    return notifier;
}

Daemon::Daemon(Config config, Logger& log, const ClockSource& clock, RandomSource& random,
               sys::Ops& ops, sys::Notifier& notifier)
    : config_(std::move(config)),
      log_(log),
      clock_(clock),
      notifier_(notifier),
      loop_(clock, ops),
      core_(config_.peers, random, *this, clock.now()),
      started_(clock.now()),
      state_(state_file_path(config_), fd_store_available(), log),
      throttle_(random.next_u64()) {
    core_.set_auth(auth_keys(config_.auth));
    adopt_passed_fds();
    if (auto r = reconcile_listeners(endpoints(config_)); !r) throw std::runtime_error(r.error());
    if (listeners_.empty()) throw std::runtime_error("no address to listen on");
    state_timer_ = loop_.add_timer([this] { begin_periodic_save(); });
    save_step_timer_ = loop_.add_timer([this] { save_step(); });
    restore_state();
    hooks_ = std::make_unique<HookRunner>(loop_, log_);
    hooks_->configure(config_.hooks);
    control_ = make_control_server(config_.control_socket);

    wheel_timer_ = loop_.add_timer([this] {
        last_wheel_fire_ = loop_.now();
        last_lag_ = std::max(Duration::zero(), loop_.now() - wheel_deadline_);
        stats_.max_lag = std::max(stats_.max_lag, last_lag_);
        // The machine slept: ACKs that came meanwhile were lost with it,
        // through no fault of their peers.
        if (const auto asleep = time_asleep())
            if (const auto slept = sleep_.observe(*asleep)) {
                core_.doubt_receive(loop_.now());
                log_.logf(LOG_WARNING,
                          "the machine was suspended for {}: unanswered probes sent before "
                          "are not counted against their peers",
                          format_duration(std::chrono::round<milliseconds>(*slept)));
            }
        // STATUS= shows the worst lag; it is told again once that has grown by a quarter.
        if (stats_.max_lag > reported_lag_ + reported_lag_ / 4 + kLagReportStep)
            status_dirty_ = true;
        // ACKs that came before the probes fell due are read before any
        // verdict, even when a wake-up's budget left them in the queue or
        // reads were deferred to this step.
        resume_reads();
        for (const std::uint32_t id : std::exchange(backlogged_, {}))
            read_socket(id, kDrainBatches);
        if (!backlogged_.empty()) core_.doubt_unread(loop_.now());
        wheel_behind_ = core_.on_timer(loop_.now());
        after_work();
        // The ACKs to the probes just sent are read on the next step (at
        // once when the core is behind: the reads come first there).
        defer_reads();
    });
    read_timer_ = loop_.add_timer([this] {
        if (resume_reads()) defer_reads();
        after_work();
    });
    summary_timer_ = loop_.add_timer([this] { log_throttle_summary(); });
    log_timer_ = loop_.add_timer([this] { after_work(); });
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
    // Last: their events go through the throttle and its timer.
    targets_ = std::make_unique<TargetSet>(
        loop_, random,
        TargetSet::Hooks{.event = [this](const PeerEvent& e) { peer_event(e); },
                         .done =
                             [this] {
                                 if (status_dirty_) notify_status();
                             }});
    core_.set_reserved_names([this](std::string_view name) { return targets_->contains(name); });
    targets_->apply(config_.targets);
    loop_.on_signal(SIGTERM, [this] { stop(); });
    loop_.on_signal(SIGINT, [this] { stop(); });
    loop_.on_signal(SIGHUP, [this] { reload(); });
}

Daemon::~Daemon() = default;

void Daemon::adopt_passed_fds() {
    char** names = nullptr;
    const int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) throw std::runtime_error("sd_listen_fds failed");
    std::vector<std::string> fd_names;
    for (int i = 0; i < n; ++i) fd_names.emplace_back(names && names[i] ? names[i] : "");
    if (names) {
        for (int i = 0; i < n; ++i) std::free(names[i]);
        std::free(names);
    }
    for (int i = 0; i < n; ++i) {
        const int fd = SD_LISTEN_FDS_START + i;
        const std::string& name = fd_names[static_cast<std::size_t>(i)];
        if (name == StateStore::kMemfdNames[0] || name == StateStore::kMemfdNames[1]) {
            state_.adopt_memfd(name, UniqueFd(fd));
            continue;
        }
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_DGRAM, -1) <= 0) {
            log_.logf(LOG_WARNING, "ignoring inherited fd {} ({}): not a datagram socket", fd,
                      name);
            continue;
        }
        auto socket = UdpSocket::adopt(UniqueFd(fd), loop_.sys());
        if (!socket) throw std::runtime_error(socket.error());
        // One the previous process bound and left in the fd store, with the
        // datagrams that arrived meanwhile still queued.
        std::optional<Endpoint> stored;
        for (const auto& [prefix, kind] : kStoredSocketPrefixes)
            if (name.starts_with(prefix))
                stored = Endpoint{socket->local(), static_cast<Kind>(kind)};
        log_.logf(LOG_INFO, "serving on {} ({})", socket->local().to_string(),
                  stored ? "kept by systemd across the restart" : "from systemd");
        add_listener(stored, std::move(*socket), stored ? name : std::string());
    }
}

void Daemon::restore_state() {
    if (!state_.enabled()) return;
    if (auto loaded = state_.load()) {
        const auto restored =
            core_.restore(loaded->snapshot, loaded->age, clock_.now(),
                          [this](const Address& listener) -> std::optional<std::uint32_t> {
                              for (const auto& [id, l] : listeners_)
                                  if (l.socket.local() == listener) return id;
                              return std::nullopt;
                          });
        if (!restored)
            log_.logf(LOG_WARNING, "ignoring saved state from {}: {}", loaded->source,
                      restored.error());
        else
            log_.logf(LOG_INFO, "restored {} peer{} from {} (saved {} ago){}", restored->peers,
                      restored->peers == 1 ? "" : "s", loaded->source,
                      format_duration(std::chrono::ceil<milliseconds>(loaded->age)),
                      restored->skipped ? fmt::format(", {} not restored (no listener for them, "
                                                      "or over max_peers)",
                                                      restored->skipped)
                                        : std::string());
    }
    // Saved soon even without a change, so a crash right after start loses nothing.
    loop_.arm_timer(state_timer_, clock_.now() + kStateSaveDelay);
}

void Daemon::state_changed() {
    if (!state_.enabled() || stopping_) return;
    const TimePoint soon = loop_.now() + kStateSaveDelay;
    const auto armed = loop_.timer_deadline(state_timer_);
    if (!armed || *armed > soon) loop_.arm_timer(state_timer_, soon);
}

Address Daemon::listener_address(std::uint32_t id) const {
    const auto it = listeners_.find(id);
    return it == listeners_.end() ? Address{} : it->second.socket.local();
}

// Whole, in this iteration: the loop is ending, and the copy must be complete
// before BYE 8 promises the peers a takeover. A periodic save in progress is
// abandoned for it.
bool Daemon::save_final() {
    const TimePoint now = loop_.now();
    loop_.arm_timer(save_step_timer_, std::nullopt);
    const Duration started = wall_time();
    const bool saved = state_.save(
        core_.snapshot(now, [this](std::uint32_t id) { return listener_address(id); }), now);
    const Duration took = wall_time() - started;
    save_stats_.record_step(took);
    save_stats_.finished(core_.peers().size(), took, saved);
    return saved;
}

void Daemon::begin_periodic_save() {
    if (stopping_) return;
    if (state_.saving()) {  // due again before the last one ended: once it has
        save_again_ = true;
        return;
    }
    const TimePoint now = loop_.now();
    if (!state_.begin_save(core_.epoch(), now)) {
        save_stats_.finished(0, Duration::zero(), false);
        arm_next_save(now);
        return;
    }
    save_cursor_ = 0;
    save_as_of_ = now;
    save_started_ = wall_time();
    loop_.arm_timer(save_step_timer_, now);
}

// kSavePeersPerStep peers per iteration, whatever the table's size: the next
// step runs on the next iteration, after whatever the sockets have brought.
void Daemon::save_step() {
    if (!state_.saving() || stopping_) return;
    const TimePoint now = loop_.now();
    if (state_.finishing()) {
        const auto saved = state_.poll_save(now);
        if (!saved) {
            loop_.arm_timer(save_step_timer_, now + kSavePoll);
            return;
        }
        save_stats_.finished(state_.records(), wall_time() - save_started_, *saved);
        arm_next_save(now);
        return;
    }
    const Duration started = wall_time();
    save_cursor_ = core_.peers().for_each_from(
        save_cursor_, kSavePeersPerStep, [this](PeerTable::Slot, const Peer& p) {
            to_record(p, save_as_of_, listener_address(p.route->socket), save_record_);
            state_.add(save_record_);
        });
    // The last piece also ends the save: its fsync and rename then run on the
    // state store's thread, and the next steps poll for them.
    if (save_cursor_ != PeerTable::kNone)
        state_.write_piece(now);
    else
        state_.finish_save(now);
    save_stats_.record_step(wall_time() - started);
    if (state_.saving()) {
        loop_.arm_timer(save_step_timer_, now);
        return;
    }
    save_stats_.finished(0, wall_time() - save_started_, false);  // every copy failed
    arm_next_save(now);
}

// Soon if a save fell due while this one ran (what changed meanwhile may be
// missing from it), else at the refresh period; never later than a save
// state_changed() asked for.
void Daemon::arm_next_save(TimePoint now) {
    TimePoint next =
        now + (save_again_ ? kStateSaveDelay
                           : std::min<Duration>(kStateRefresh, config_.peers.forget_after / 2));
    if (const auto armed = loop_.timer_deadline(state_timer_)) next = std::min(next, *armed);
    loop_.arm_timer(state_timer_, next);
    save_again_ = false;
}

void Daemon::keep_in_fd_store(Listener& listener) {
    if (!state_.fd_store() || !listener.configured || !listener.fd_store_name.empty()) return;
    const auto kind = static_cast<int>(listener.configured->kind);
    std::string name;
    for (const auto& [prefix, k] : kStoredSocketPrefixes)
        if (k == kind) name = fmt::format("{}{}-{}", prefix, getpid(), next_listener_id_);
    const std::string message = "FDSTORE=1\nFDNAME=" + name;
    const int fds[1] = {listener.socket.fd()};
    if (notifier_.notify_with_fds(message, fds) > 0) listener.fd_store_name = name;
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
        auto socket = UdpSocket::bind(e.address, loop_.sys());
        if (!socket) return Err{socket.error()};  // `opened` closes what this attempt bound
        opened.emplace_back(e, std::move(*socket));
    }
    for (auto it = listeners_.begin(); it != listeners_.end();) {
        const auto& configured = it->second.configured;
        if (configured && std::find(wanted.begin(), wanted.end(), *configured) == wanted.end()) {
            log_.logf(LOG_INFO, "no longer listening on {}", configured->address.to_string());
            if (!it->second.fd_store_name.empty())
                notify("FDSTOREREMOVE=1\nFDNAME=" + it->second.fd_store_name);
            flush(it->first);
            outbox_.erase(it->first);
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

void Daemon::add_listener(std::optional<Endpoint> configured, UdpSocket socket,
                          std::string fd_store_name) {
    const std::uint32_t id = next_listener_id_++;
    const int fd = socket.fd();
    outbox_[id].reserve(UdpSocket::kBatchSize);
    auto& l = listeners_
                  .emplace(id, Listener{std::move(configured), std::move(socket),
                                        std::move(fd_store_name)})
                  .first->second;
    keep_in_fd_store(l);
    loop_.add_fd(fd, EPOLLIN, [this, id](std::uint32_t events) {
        if (events & EPOLLERR) on_send_errors(id);
        if ((events & EPOLLIN) && read_socket(id, kBatchesPerWakeup)) defer_reads();
        after_work();
    });
}

// Stops waking for datagrams until the next step of the grid (see
// kDeferReadsAbove); the wheel timer or read_timer_ reads them then.
void Daemon::defer_reads() {
    if (reads_deferred_ || core_.peers().size() < kDeferReadsAbove) return;
    for (auto& [id, l] : listeners_) loop_.modify_fd(l.socket.fd(), 0);
    reads_deferred_ = true;
    loop_.arm_timer(read_timer_, step_after(loop_.now()));
}

// Watches the sockets again and reads what waits. True if anything was read.
bool Daemon::resume_reads() {
    if (!reads_deferred_) return false;
    reads_deferred_ = false;
    loop_.arm_timer(read_timer_, std::nullopt);
    for (auto& [id, l] : listeners_) loop_.modify_fd(l.socket.fd(), EPOLLIN);
    bool read = false;
    for (auto& [id, l] : listeners_) read = read_socket(id, kBatchesPerWakeup) || read;
    return read;
}

bool Daemon::read_socket(std::uint32_t id, int max_batches) {
    auto it = listeners_.find(id);
    if (it == listeners_.end()) return false;
    UdpSocket& socket = it->second.socket;
    const Kind kind = it->second.configured ? it->second.configured->kind : Kind::kap1;
    const auto probe_listener = legacy_probe_listener();
    const TimePoint now = loop_.now();
    const std::uint64_t overflows_before = socket.overflow_drops();
    bool backlog = true;
    bool read_any = false;
    const UdpSocket::BatchHint prefetch =
        kind == Kind::kap1 ? UdpSocket::BatchHint([this](auto batch) { core_.prefetch(batch); })
                           : UdpSocket::BatchHint();
    for (int i = 0; i < max_batches && backlog; ++i) {
        const std::size_t n = socket.receive_batch(
            [&](const UdpSocket::Received& r) {
                if (r.truncated) {
                    core_.count_dropped_datagram(kind == Kind::kap1 ? Drop::bad_length
                                                                    : Drop::legacy_malformed);
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
                                Route{*probe_listener,
                                      listeners_.at(*probe_listener).socket.local()},
                                config_.legacy.probe_port, now);
                        break;
                    case Kind::legacy_probe:
                        core_.on_legacy_reply(r.data, r.from, now);
                        break;
                }
            },
            UdpSocket::kBatchSize, prefetch);
        backlog = n == UdpSocket::kBatchSize;
        read_any = read_any || n > 0;
    }
    // The kernel dropped datagrams for us: an ACK may be missing through no
    // fault of its peer.
    if (socket.overflow_drops() != overflows_before) core_.doubt_receive(now);
    // Once: each entry is drained in full when probes fall due. Pushed again
    // by every read that left a backlog, one socket drained its queue N
    // times over in the Nth step of a long backlog (a 1 M registration: 0.2
    // to 1.6 s steps, growing by 4 096 datagrams each).
    if (backlog && std::find(backlogged_.begin(), backlogged_.end(), id) == backlogged_.end())
        backlogged_.push_back(id);
    return read_any;
}

// ICMP errors for probes we sent: what they say about the peer is the core's business.
void Daemon::on_send_errors(std::uint32_t id) {
    auto it = listeners_.find(id);
    if (it == listeners_.end()) return;
    const TimePoint now = loop_.now();
    it->second.socket.drain_errors([&](const UdpSocket::SendError& e) {
        core_.on_icmp_error(e.to, e.error, e.reporter, e.quoted, now);
    });
}

// Everything a handler produced leaves here, once per handler: batched
// datagrams, the wheel's next deadline, and at most one STATUS update.
void Daemon::after_work() {
    for (auto& [id, queue] : outbox_)
        if (!queue.empty()) flush(id);
    auto next = core_.next_deadline();
    if (next) {
        next = wheel_behind_ ? loop_.now()
                             : step_at_or_after(std::max(*next, step_after(last_wheel_fire_)));
        wheel_deadline_ = *next;
    }
    loop_.arm_timer(wheel_timer_, next);
    if (status_dirty_) notify_status();
    // The log never holds the loop up: what it could not take is retried soon.
    log_.flush();
    if (log_.pending() && !loop_.timer_deadline(log_timer_))
        loop_.arm_timer(log_timer_, loop_.now() + kLogRetry);
    if (wake_watchers_ && control_) control_->wake();
    wake_watchers_ = false;
}

void Daemon::flush(std::uint32_t id) noexcept {
    const auto out = outbox_.find(id);
    if (out == outbox_.end() || out->second.empty()) return;
    auto& queue = out->second;
    if (auto it = listeners_.find(id); it != listeners_.end()) {
        UdpSocket& socket = it->second.socket;
        const std::uint64_t no_room_before = socket.send_no_room();
        socket.send_batch(queue);
        // A probe this host had no room to send is no evidence against its
        // peer: its missing ACK does not count, as after a receive overflow.
        if (socket.send_no_room() != no_room_before) core_.doubt_send(loop_.now());
    } else {
        unroutable_ += queue.size();
    }
    queue.clear();
}

void Daemon::notify(const std::string& state) {
    // Nothing to do about a failure but count it: the manager may be gone.
    if (notifier_.notify(state) < 0) ++notify_failures_;
}

// Allocates nothing: each listener's queue was reserved for a whole batch
// when it opened, and is flushed when it holds one.
void Daemon::send(const Route& route, const Address& to,
                  std::span<const std::uint8_t> data) noexcept {
    const auto out = outbox_.find(route.socket);
    if (out == outbox_.end()) {
        ++unroutable_;  // its socket was closed by a reload
        return;
    }
    auto& queue = out->second;
    OutDatagram& d = queue.emplace_back();
    d.to = to;
    d.from = route.local;
    d.size = static_cast<std::uint16_t>(std::min(data.size(), d.data.size()));
    std::copy_n(data.begin(), d.size, d.data.begin());
    if (queue.size() >= UdpSocket::kBatchSize) flush(route.socket);
}

void Daemon::peer_event(const PeerEvent& event) {
    // Every event is numbered, kept for watchers and offered to the hooks,
    // whatever the journal's rate limit lets through.
    const auto wall =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch());
    const EventRecord& record = ring_.push(event, wall.count());
    hooks_->on_event(record);
    wake_watchers_ = true;
    status_dirty_ = true;
    state_changed();
    ++event_counts_[static_cast<std::size_t>(event.kind)];
    if (!loop_.timer_deadline(summary_timer_))
        loop_.arm_timer(summary_timer_, loop_.now() + EventThrottle::Limits{}.summary_period);
    if (throttle_.admit(event.kind, event.peer.name, event.peer.address, loop_.now()))
        log_.peer_event(event);
}

void Daemon::log_throttle_summary() {
    if (auto line = throttle_.summary(loop_.now())) log_.log(LOG_WARNING, *line);
}

// Called while the shedder's state differs from the one last logged. At most
// one line per kShedLogPeriod: a change sooner is told when the period ends
// (an episode that ended meanwhile is counted in the next "back under" line).
void Daemon::log_shedding() {
    const LoadShedder& load = core_.load();
    const TimePoint now = loop_.now();
    if (load.shedding() && shedding_since_ == TimePoint{}) shedding_since_ = now;
    if (shed_logged_at_ != TimePoint{} && now - shed_logged_at_ < kShedLogPeriod) return;
    shed_logged_at_ = now;
    shedding_ = load.shedding();
    if (shedding_) {
        log_.logf(LOG_WARNING,
                  "over capacity (loop busy {}% of the last second{}): new registrations are "
                  "answered busy until the load falls",
                  std::lround(load.last_busy_fraction() * 100),
                  load.last_overflowed() ? ", receive queue overflowed" : "");
        return;
    }
    log_.logf(LOG_NOTICE,
              "back under capacity: {} new registrations answered busy in the last {:.1f} s",
              core_.registrations_shed() - shed_logged_,
              std::chrono::duration<double>(now - shedding_since_).count());
    shed_logged_ = core_.registrations_shed();
    shedding_since_ = TimePoint{};
}

std::unique_ptr<ControlServer> Daemon::make_control_server(const std::string& path) {
    return std::make_unique<ControlServer>(
        loop_, path, [this](std::string_view request) { return control_request(request); });
}

void Daemon::notify_status() {
    reported_lag_ = stats_.max_lag;
    notify(fmt::format("STATUS={}; loop lag max {:.1f} ms", summary_line(counts()),
                       std::chrono::duration<double, std::milli>(reported_lag_).count()));
    status_dirty_ = false;
}

PeerCounts Daemon::counts() const {
    return core_.peers().counts() + targets_->counts();
}

// The one handler of the running daemon that may meet an exception (the
// new configuration's sockets, hooks or targets failing to set up): it is
// reported, and the daemon goes on with what it has.
void Daemon::reload() {
    try {
        reload_config();
    } catch (const std::exception& e) {
        log_.logf(LOG_ERR, "reload failed: {}", e.what());
        notify("READY=1");
        status_dirty_ = true;
        after_work();
    }
}

void Daemon::reload_config() {
    const TimePoint now = loop_.now();
    notify("RELOADING=1\n" + monotonic_usec(now));
    log_.logf(LOG_INFO, "reloading {}", config_.source);
    // All of the new configuration or none of it: whatever can fail (the
    // file, a new control socket, new listeners) is tried before anything
    // running changes, and undone if a later step fails.
    const auto failed = [&](const std::string& why) {
        log_.logf(LOG_ERR, "reload failed, keeping the running configuration: {}", why);
    };
    auto fresh = load_config(config_.source);
    std::unique_ptr<ControlServer> new_control;
    if (!fresh) {
        failed(fresh.error().to_string());
    } else if (fresh->control_socket != config_.control_socket &&
               !(new_control = try_control_server(fresh->control_socket, failed))) {
        // logged by try_control_server
    } else if (!reserve_peers(fresh->peers.max_peers, failed)) {
        // logged by reserve_peers
    } else if (auto r = reconcile_listeners(endpoints(*fresh)); !r) {
        failed(r.error());  // new_control, if any, unlinks its path as it goes
    } else {
        if (new_control) control_ = std::move(new_control);
        core_.set_limits(fresh->peers);
        const bool metrics_changed = fresh->metrics.textfile != config_.metrics.textfile ||
                                     fresh->metrics.interval != config_.metrics.interval;
        core_.set_auth(auth_keys(fresh->auth));
        config_ = std::move(*fresh);
        log_.logf(LOG_INFO, "{}", auth_summary(config_.auth));
        hooks_->configure(config_.hooks);
        if (metrics_changed)
            loop_.arm_timer(metrics_timer_, config_.metrics.textfile.empty()
                                                ? std::nullopt
                                                : std::optional<TimePoint>(now));
        targets_->apply(config_.targets);
        for (const TargetConfig& t : config_.targets)
            if (core_.peers().find_name(t.name) != PeerTable::kNone)
                log_.logf(LOG_WARNING,
                          "target {}: a peer holds this name; it keeps its session until it is "
                          "forgotten, and its registrations are refused from now on",
                          t.name);
        log_.logf(LOG_INFO, "configuration reloaded: listening on {}",
                  fmt::join(listen_addresses(), ", "));
    }
    notify("READY=1");
    status_dirty_ = true;
    after_work();
}

// Room for a larger max_peers is taken before anything changes, so that
// the table never has to grow while it fills (ServerCore::reserve). Room
// already taken is kept if the reload fails later: it only costs memory.
bool Daemon::reserve_peers(std::uint32_t max_peers,
                           const std::function<void(const std::string&)>& failed) {
    try {
        core_.reserve(max_peers);
        return true;
    } catch (const std::bad_alloc&) {
        failed(fmt::format("no memory for max_peers = {}", max_peers));
        return false;
    }
}

std::unique_ptr<ControlServer> Daemon::try_control_server(
    const std::string& path, const std::function<void(const std::string&)>& failed) {
    try {
        return make_control_server(path);
    } catch (const std::exception& e) {
        failed(e.what());
        return nullptr;
    }
}

void Daemon::stop(bool for_good) {
    if (stopping_) return;
    stopping_ = true;
    notify("STOPPING=1");
    // BYE 8 is a promise that the next process takes the sessions over: only
    // when they are saved.
    if (state_.enabled() && !for_good && save_final()) {
        log_.log(LOG_INFO,
                 "stopping: peer table saved; telling every peer we will be back (BYE 8)");
        core_.shutdown(kap::Diag::restarting);
    } else {
        if (for_good) state_.discard();
        log_.logf(LOG_INFO, "stopping{}: saying goodbye to every peer",
                  for_good ? " for good" : "");
        core_.shutdown(kap::Diag::shutting_down);
    }
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
    s.loop_lag_s = std::chrono::duration<double>(last_lag_).count();
    s.loop_lag_max_s = std::chrono::duration<double>(stats_.max_lag).count();
    // Peer events kept out of the journal by the rate limit, and other lines
    // suppressed by log_limited().
    s.log_events_dropped = throttle_.suppressed_total() + log_.suppressed();
    for (const auto& [id, l] : listeners_) s.send_errors += l.socket.send_errors();
    s.unroutable = unroutable_;
    s.events = event_counts_;
    s.last_event_seq = ring_.next_seq() - 1;
    s.hooks_running = hooks_->running();
    s.hooks_pending = hooks_->pending();
    s.hooks_started = hooks_->started();
    s.hooks_dropped = hooks_->dropped();
    s.watchers = watchers_.count();
    return s;
}

// Rewritten whole every interval; a failure is logged (rate-limited) and
// retried at the next interval, the previous file staying in place.
void Daemon::write_metrics_file() {
    if (config_.metrics.textfile.empty()) return;
    MetricsText text(core_, stats());
    auto r =
        replace_file(config_.metrics.textfile, [&](std::string& out) { return text.next(out); });
    if (!r) log_.log_limited("metrics", LOG_WARNING, "metrics textfile: " + r.error(), loop_.now());
    loop_.arm_timer(metrics_timer_, loop_.now() + config_.metrics.interval);
}

ControlServer::Producer Daemon::control_request(std::string_view line) {
    const auto request = parse_control_request(line);
    if (!request) return ControlServer::whole(to_line({{"error", request.error()}}));
    switch (request->kind) {
        case ControlRequest::Kind::metrics: {
            // A few peers per piece: the streaming server asks for the next only
            // when the client can take it.
            auto text = std::make_shared<MetricsText>(core_, stats());
            return [text](std::string& out) { return text->next(out); };
        }
        case ControlRequest::Kind::watch:
            if (auto stream = watchers_.open(request->since)) return std::move(*stream);
            return ControlServer::whole(
                to_line({{"error",
                          fmt::format("too many watchers (at most {})", Watchers::kMaxWatchers)}}));
        case ControlRequest::Kind::peers:
            return peers_stream(
                core_, [this] { return loop_.now(); }, targets_->peer_rows(loop_.now()));
        case ControlRequest::Kind::targets:
            return ControlServer::whole(to_line(targets_->targets_json(loop_.now())));
        case ControlRequest::Kind::status:
            return ControlServer::whole(to_line(status()));
        case ControlRequest::Kind::shutdown_for_good:
            // Stops when the answer is written, so that it goes out before the loop ends.
            return [this](std::string& out) {
                stop(true);
                out = to_line({{"stopping", true}});
                return false;
            };
    }
    return ControlServer::whole(to_line({{"error", "unknown request"}}));
}

nlohmann::json Daemon::status() const {
    using std::chrono::duration_cast;
    using std::chrono::microseconds;
    const DaemonInfo info{KEEPALIVE_VERSION, config_.source, listen_addresses(),
                          std::chrono::duration<double>(loop_.now() - started_).count()};
    auto j = status_json(core_, counts(), info);
    std::uint64_t send_errors = 0;
    std::uint64_t send_no_room = 0;
    std::uint64_t receive_errors = 0;
    std::uint64_t overflow_drops = 0;
    for (const auto& [id, l] : listeners_) {
        send_errors += l.socket.send_errors();
        send_no_room += l.socket.send_no_room();
        receive_errors += l.socket.receive_errors();
        overflow_drops += l.socket.overflow_drops();
    }
    auto& d = j["daemon"];
    d["send_errors"] = send_errors;
    // Of those, the datagrams this host had no room for (EAGAIN, ENOBUFS):
    // their verdicts are withheld, as after a receive overflow.
    d["send_no_room"] = send_no_room;
    d["receive_errors"] = receive_errors;
    d["unroutable"] = unroutable_;
    d["notify_failures"] = notify_failures_;
    d["auth"] = auth_json(config_.auth);
    // Datagrams the kernel dropped because the daemon did not read them in
    // time, and the verdicts withheld for that reason.
    d["receive_overflows"] = overflow_drops;
    d["verdicts_withheld"] = core_.verdicts_withheld();
    // Over capacity: new registrations answered "busy" (core/load_shedder.hpp).
    const LoadShedder& load = core_.load();
    d["load"] = {
        {"shedding", load.shedding()},
        {"busy_percent", std::lround(load.last_busy_fraction() * 100)},
        {"shed_busy_percent", load.busy_percent()},
        {"episodes", load.episodes()},
        {"registrations_shed", core_.registrations_shed()},
    };
    d["events_not_logged"] = throttle_.suppressed_total();
    d["log_records_dropped"] = log_.dropped_total();
    // Every event since start, logged or not: what alerting should count.
    auto& events = j["events"];
    for (std::size_t k = 0; k < kEventKindCount; ++k)
        events[std::string(to_string(static_cast<EventKind>(k)))] = event_counts_[k];
    d["control_refused_no_fd"] = control_ ? control_->refused_no_fd() : 0;
    // The saved peer table: how long saving it held the loop (wall time, the
    // disk's waits included).
    d["state"] = {
        {"saving", state_.saving()},
        {"saves", save_stats_.saves},
        {"save_failures", save_stats_.failures},
        {"last_save_peers", save_stats_.last_peers},
        {"last_save_ms", duration_cast<milliseconds>(save_stats_.last_duration).count()},
        {"last_save_steps", save_stats_.last_steps},
        {"longest_save_step_us", duration_cast<microseconds>(save_stats_.longest_step).count()},
    };
    d["loop"] = {
        {"iterations", stats_.iterations},
        {"longest_iteration_us", duration_cast<microseconds>(stats_.longest).count()},
        {"iterations_over_1ms", stats_.over_1ms},
        {"iterations_over_5ms", stats_.over_5ms},
        {"iterations_over_20ms", stats_.over_20ms},
        {"timer_lag_us", duration_cast<microseconds>(last_lag_).count()},
        {"max_timer_lag_us", duration_cast<microseconds>(stats_.max_lag).count()},
        {"interrupted_waits", loop_.interrupted_waits()},
        {"timerfd_failures", loop_.timerfd_failures()},
        {"suspended_us", duration_cast<microseconds>(sleep_.total()).count()},
    };
    return j;
}

void Daemon::SaveStats::record_step(Duration wall) {
    longest_step = std::max(longest_step, wall);
    ++steps;
}

void Daemon::SaveStats::finished(std::size_t peers, Duration wall, bool saved) {
    ++(saved ? saves : failures);
    last_peers = peers;
    last_duration = wall;
    last_steps = std::exchange(steps, 0);
}

// CPU time, not wall time: what the loop itself spent, whatever else the
// machine was doing.
void Daemon::LoopStats::record(Duration busy) {
    ++iterations;
    longest = std::max(longest, busy);
    over_1ms += busy > std::chrono::milliseconds(1) ? 1 : 0;
    over_5ms += busy > std::chrono::milliseconds(5) ? 1 : 0;
    over_20ms += busy > std::chrono::milliseconds(20) ? 1 : 0;
}

void Daemon::start() {
    log_.logf(LOG_INFO, "keepalived {} ready: listening on {}; {}", KEEPALIVE_VERSION,
              fmt::join(listen_addresses(), ", "), auth_summary(config_.auth));
    notify("READY=1");
    notify_status();
    after_work();  // arms the wheel: restored peers are probed without waiting for a datagram
}

// After READY nothing a peer sends may stop the daemon. There is no
// catch-all here: the handlers count and log what fails (a send, a full
// table, a bad datagram) instead of throwing, and the peer table's storage
// is reserved up to max_peers, so a full table is a REJECT, not bad_alloc.
void Daemon::run_once(std::optional<Duration> timeout) {
    const Duration before = thread_cpu_time();
    const auto query_cpu = [this] { return control_ ? control_->cpu_time() : Duration::zero(); };
    const Duration queries_before = query_cpu();
    loop_.run_once(timeout);
    const Duration busy = thread_cpu_time() - before;
    stats_.record(busy);
    // An operator's queries are not load the peers put on the loop: a
    // `peers --json` of 110 000 peers alone would turn newcomers away.
    const Duration queries = query_cpu() - queries_before;
    const Duration held = std::clamp(busy - queries, Duration::zero(), busy);
    core_.note_loop_busy(held, loop_.now() + busy);
    if (core_.load().shedding() != shedding_) log_shedding();
}

int Daemon::run() {
    start();
    while (!stopping_) run_once(std::nullopt);
    return 0;
}

}  // namespace keepalive
