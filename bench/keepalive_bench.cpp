// keepalive-bench: one scaling run of the real keepalived over loopback, and
// the same fleet against keepalive-floor (the system calls alone) in the same
// run, so the daemon's cost per probe/ACK pair comes out as a ratio to the
// floor's. See docs/benchmarks.md and --help.
//
// The peers are simulated (bench/fleet.hpp): many per UDP socket, one socket
// per 127.1.x.y source address, several sockets per thread. Registration is
// paced (a window of handshakes in flight) or a storm (everyone at once, each
// retrying with the agent's backoff). A fraction of the peers goes silent at a
// chosen time; their detection error is read from the daemon's "is down" lines.
//
// Overload (--overload-peers): a second group of peers arrives during the
// window, all at once with the agent's backoff, and leaves again (BYE) after a
// while: the load goes back to normal, and the suspects of the seconds that
// follow are counted.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <set>
#include <unordered_set>

#include "bench_process.hpp"
#include "fleet.hpp"

namespace keepalive {
namespace {

using namespace bench;
using namespace std::chrono_literals;
using sim::Fleet;

struct Options {
    std::string daemon;
    std::string floor;
    std::size_t peers = 2000;
    std::size_t up_before = 0;  // peers registered (paced) and up before the others register
    std::uint32_t interval_ms = 1000;
    std::uint8_t probes = 3;
    double duration_s = 10;
    double warmup_s = 2;
    std::size_t peers_per_socket = 2500;
    std::size_t threads = 2;
    bool storm = false;
    // Paced: registration ends when every peer is in, those told busy included
    // (else a peer told busy counts as done and retries during the window).
    bool all_registered = false;
    std::size_t register_window = 512;
    double silence_fraction = 0.01;
    double silence_at_s = 1;
    double register_timeout_s = 300;
    bool json = false;
    bool check = false;
    bool run_floor = true;
    std::uint32_t floor_tick_ms = 5;  // the daemon's wheel step
    std::uint64_t seed = 1;
    std::string log_dir;
    std::string peers_config;              // more lines for the daemon's [peers] table
    std::vector<std::string> daemon_args;  // more arguments for the daemon
    std::size_t overload_peers = 0;        // a second group that arrives and leaves in the window
    double overload_at_s = 2;              // seconds into the window
    double overload_for_s = 30;
};

// Suspects after the overload are counted over this long (issue 11's target).
constexpr double kAfterOverloadS = 5;

// The overload group, as the main thread moves it on.
enum class Overload : int { before, on, over };

// What the fleet threads are asked to do; they look every few milliseconds.
enum class Phase : int { registering_first, hold, registering, steady, silenced, stop };

// A thread that plays the peers of several sockets.
class FleetGroup {
public:
    FleetGroup(std::vector<std::unique_ptr<Fleet>> fleets,
               std::vector<std::unique_ptr<Fleet>> overload_fleets, const Options& o,
               std::atomic<Phase>& phase, std::atomic<Overload>& overload)
        : fleets_(std::move(fleets)),
          overload_fleets_(std::move(overload_fleets)),
          options_(o),
          phase_(phase),
          overload_(overload) {}

    void start() {
        thread_ = std::thread([this] { run(); });
    }
    void join() {
        if (thread_.joinable()) thread_.join();
    }
    bool first_done() const { return first_done_.load(); }
    bool done() const { return done_.load(); }
    TimePoint done_at() const { return done_at_; }
    std::uint64_t acks() const { return acks_.load(); }
    const std::vector<std::unique_ptr<Fleet>>& fleets() const { return fleets_; }
    const std::vector<std::unique_ptr<Fleet>>& overload_fleets() const { return overload_fleets_; }
    // Overload peers accepted so far (those that left included).
    std::size_t overload_admitted() const { return overload_admitted_.load(); }
    // Per fleet: (peers up before, peers registering after), and how many of
    // the latter go silent (its last ones).
    std::vector<std::pair<std::size_t, std::size_t>> plan;
    std::vector<std::size_t> silenced;
    std::vector<std::size_t> overload_plan;  // peers per overload fleet
    std::size_t sockets = 1;                 // in all groups: the registration window is shared
    std::size_t window_per_fleet = 1;

private:
    void run() {
        std::vector<pollfd> fds;
        for (const auto& f : fleets_) fds.push_back({f->fd(), POLLIN, 0});
        for (const auto& f : overload_fleets_) fds.push_back({f->fd(), POLLIN, 0});
        Overload overload_seen = Overload::before;
        Phase seen = Phase::registering_first;
        window_per_fleet = std::max<std::size_t>(1, options_.register_window / sockets);
        for (auto& f : fleets_) f->set_registration(window_per_fleet, false);
        bool registering = true;
        for (;;) {
            const Phase now_phase = phase_.load();
            if (now_phase != seen) {
                if (now_phase == Phase::registering) {
                    for (std::size_t i = 0; i < fleets_.size(); ++i) {
                        const std::size_t more = plan[i].second;
                        fleets_[i]->add(fmt::format("s{}-", fleets_[i]->local_port()), more,
                                        options_.interval_ms, options_.probes);
                        fleets_[i]->set_registration(
                            options_.storm ? fleets_[i]->peers().size() : window_per_fleet,
                            options_.storm);
                    }
                    registering = true;
                }
                if (now_phase == Phase::silenced)
                    for (std::size_t i = 0; i < fleets_.size(); ++i) {
                        const std::size_t n = fleets_[i]->peers().size();
                        const std::size_t k = silenced[i];
                        fleets_[i]->silence(n - k, k);
                    }
                if (now_phase == Phase::stop) return;
                seen = now_phase;
            }
            const Overload overload = overload_.load();
            if (overload != overload_seen) {
                for (std::size_t i = 0; i < overload_fleets_.size(); ++i) {
                    Fleet& f = *overload_fleets_[i];
                    if (overload == Overload::on) {
                        f.add(fmt::format("o{}-", f.local_port()), overload_plan[i],
                              options_.interval_ms, options_.probes);
                        f.set_registration(f.peers().size(), true);
                    } else {
                        f.leave(0, f.peers().size());
                    }
                }
                overload_seen = overload;
            }
            const int r = ::poll(fds.data(), fds.size(), 5);
            if (r < 0 && errno != EINTR) return;
            bool all_done = true;
            std::uint64_t acks = 0;
            for (std::size_t i = 0; i < fleets_.size(); ++i) {
                if (registering || (fds[i].revents & POLLIN) != 0) fleets_[i]->service(registering);
                fleets_[i]->retry_busy();
                all_done = all_done && fleets_[i]->registration_done() &&
                           (!options_.all_registered || fleets_[i]->waiting_busy() == 0);
                acks += fleets_[i]->stats().acks;
            }
            std::size_t admitted = 0;
            for (std::size_t i = 0; i < overload_fleets_.size(); ++i) {
                Fleet& f = *overload_fleets_[i];
                if (overload_seen == Overload::on || (fds[fleets_.size() + i].revents & POLLIN))
                    f.service(overload_seen == Overload::on);
                acks += f.stats().acks;
                admitted += f.accepted();
            }
            if (overload_seen == Overload::on) overload_admitted_.store(admitted);
            acks_.store(acks);
            if (registering && all_done) {
                registering = false;
                if (seen == Phase::registering_first) {
                    first_done_.store(true);
                } else {
                    done_at_ = Clock::now();
                    done_.store(true);
                }
            }
        }
    }

    std::vector<std::unique_ptr<Fleet>> fleets_;
    std::vector<std::unique_ptr<Fleet>> overload_fleets_;
    const Options& options_;
    std::atomic<Phase>& phase_;
    std::atomic<Overload>& overload_;
    std::atomic<std::size_t> overload_admitted_{0};
    std::thread thread_;
    std::atomic<bool> first_done_{false};
    std::atomic<bool> done_{false};
    TimePoint done_at_{};
    std::atomic<std::uint64_t> acks_{0};
};

struct Measured {
    double cpu_s = 0;
    double elapsed_s = 0;
    std::uint64_t acks = 0;
    long rss_kib = 0;
    long rss_base_kib = 0;
    double wakeups_per_s = 0;
    double loop_iterations_per_s = 0;
    double register_seconds = 0;
    bool registration_complete = true;
    std::uint64_t kernel_drops = 0;
    std::uint64_t kernel_drops_window = 0;
    std::uint64_t verdicts_withheld_window = 0;
    std::uint64_t max_timer_lag_us = 0;
    std::uint64_t longest_iteration_us = 0;
    std::uint64_t receive_overflows = 0;
    std::uint64_t verdicts_withheld = 0;
    std::uint64_t busy_rejects = 0;
    std::uint64_t suspects = 0;
    std::uint64_t downs = 0;
    std::size_t silenced = 0;
    std::size_t registered = 0;
    std::size_t up_at_end = 0;
    std::size_t up_before_window = 0;
    std::size_t down_at_end = 0;
    std::size_t silenced_down = 0;
    std::size_t false_downs = 0;
    std::size_t false_suspects = 0;
    std::size_t false_downs_window = 0;  // from the window's start on
    std::size_t false_suspects_window = 0;
    std::vector<double> detection_error_ms;
    // The overload window (--overload-peers), and the kAfterOverloadS after it.
    std::size_t overload_admitted = 0;
    double overload_pairs_per_s = 0;
    double overload_cpu_percent = 0;
    std::uint64_t overload_kernel_drops = 0;
    std::size_t false_suspects_overload = 0;
    std::size_t false_downs_overload = 0;
    std::size_t false_suspects_after_overload = 0;
    std::size_t false_downs_after_overload = 0;
    // Events the daemon counted but did not log (rate limit, full log queue):
    // not told apart by name.
    std::uint64_t events_not_logged = 0;
    std::uint64_t watch_missed = 0;  // events the watch stream lost (it fell a ring behind)
    std::uint64_t unattributed_suspects = 0;
    std::uint64_t unattributed_downs = 0;
    // From `keepalivectl peers` at the end, which no rate limit thins: the
    // base fleet's answering peers whose state ever changed (-1: not asked).
    long base_peers_changed_state = -1;
    // What became of the overload group, by name.
    struct Group {
        std::size_t admitted = 0;           // accepted at some time
        std::size_t left = 0;               // "has left" (its BYE arrived)
        std::size_t down = 0;               // down at some time
        std::size_t down_after = 0;         // down after the group stopped answering
        std::size_t suspects_during = 0;    // while the group still answered: false
        std::size_t downs_during = 0;       // likewise
        std::size_t still_registering = 0;  // never accepted (told busy to the end)
        std::uint64_t busy_rejects = 0;
        // From `keepalivectl peers`: peers that left (BYE) after a suspect or
        // down on the way (-1: not asked).
        long changed_state = -1;
    } group;
    bool shedding_at_return = false;
    std::uint64_t registrations_shed = 0;
    double cpu_per_pair_us() const {
        return acks > 0 ? cpu_s * 1e6 / static_cast<double>(acks) : 0;
    }
};

std::uint64_t event_count(const nlohmann::json& status, const char* kind) {
    const auto events = status.find("events");
    if (events == status.end()) return 0;
    return events->value(kind, std::uint64_t{0});
}

std::uint64_t daemon_field(const nlohmann::json& status, const char* key) {
    const auto d = status.find("daemon");
    if (d == status.end()) return 0;
    return d->value(key, std::uint64_t{0});
}

std::uint64_t loop_iterations(const nlohmann::json& status) {
    const auto d = status.find("daemon");
    if (d == status.end() || !d->contains("loop")) return 0;
    return (*d)["loop"].value("iterations", std::uint64_t{0});
}

Duration seconds_of(double s) {
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

// Runs the fleet against `binary` (the daemon, or the floor when `floor`).
Measured run(const Options& o, bool floor) {
    const std::size_t total = o.peers + o.up_before;
    DaemonProcess::Options d;
    d.binary = floor ? o.floor : o.daemon;
    d.max_peers = total + o.overload_peers + 1000;
    d.max_per_host = total + o.overload_peers + 1000;
    d.stand_in = floor;
    d.peers_config = o.peers_config;
    if (!floor) d.extra_args = o.daemon_args;
    if (floor) {
        d.extra_args = {"--interval-ms", std::to_string(o.interval_ms), "--tick-ms",
                        std::to_string(o.floor_tick_ms)};
        // The daemon reads on its wheel's grid from 1000 peers on; so does the floor.
        if (total >= 1000) d.extra_args.push_back("--read-on-tick");
    }
    if (!o.log_dir.empty())
        d.log_copy = fmt::format("{}/{}-{}.log", o.log_dir, floor ? "floor" : "daemon", total);
    DaemonProcess target(d);
    // Under a real-time policy (chrt -f), the program measured runs one level
    // above the fleet's threads, so that its figures are its own and not the
    // wait for a CPU the fleet holds.
    if (::sched_getscheduler(0) == SCHED_FIFO) {
        sched_param sp{};
        ::sched_getparam(0, &sp);
        sp.sched_priority += 1;
        ::sched_setscheduler(target.pid(), SCHED_FIFO, &sp);
    }
    if (!floor) (void)target.control("status");
    std::this_thread::sleep_for(200ms);
    Measured m;
    m.rss_base_kib = read_memory(target.pid()).rss_kib;

    // Sockets: one per 127.1.x.y source, peers spread evenly; groups of sockets per thread.
    const std::size_t sockets =
        std::max<std::size_t>(1, (total + o.peers_per_socket - 1) / o.peers_per_socket);
    // The overload group's sockets count too: they may have a thread of their own.
    const std::size_t group_sockets =
        floor ? 0 : (o.overload_peers + o.peers_per_socket - 1) / o.peers_per_socket;
    const std::size_t threads = std::clamp<std::size_t>(o.threads, 1, sockets + group_sockets);
    std::atomic<Phase> phase{Phase::registering_first};
    std::vector<std::unique_ptr<FleetGroup>> groups;
    std::vector<std::vector<std::unique_ptr<Fleet>>> fleets(threads);
    std::vector<std::vector<std::unique_ptr<Fleet>>> overload_fleets(threads);
    std::vector<std::vector<std::size_t>> overload_plans(threads);
    std::atomic<Overload> overload{Overload::before};
    std::vector<std::vector<std::pair<std::size_t, std::size_t>>> plans(threads);
    std::vector<std::vector<std::size_t>> silenced(threads);
    const auto share = [&](std::size_t n, std::size_t i) {
        return n / sockets + (i < n % sockets ? 1 : 0);
    };
    const auto source_of = [](std::size_t i) {
        return Address::v4(0x7f010000u | static_cast<std::uint32_t>((i / 250) << 8 | (i % 250 + 1)),
                           0);
    };
    const std::size_t to_silence =
        floor ? 0 : static_cast<std::size_t>(o.silence_fraction * static_cast<double>(o.peers));
    for (std::size_t i = 0; i < sockets; ++i) {
        auto f = std::make_unique<Fleet>(target.address(), o.seed * 7919 + i, source_of(i));
        const std::size_t first = share(o.up_before, i);
        f->add(fmt::format("u{}-", i), first, o.interval_ms, o.probes);
        plans[i % threads].push_back({first, share(o.peers, i)});
        silenced[i % threads].push_back(share(to_silence, i));
        fleets[i % threads].push_back(std::move(f));
    }
    // The overload group has sockets (and source addresses) of its own.
    const std::size_t overload_peers = floor ? 0 : o.overload_peers;
    const std::size_t overload_sockets = group_sockets;
    for (std::size_t i = 0; i < overload_sockets; ++i) {
        overload_fleets[(sockets + i) % threads].push_back(std::make_unique<Fleet>(
            target.address(), o.seed * 7919 + sockets + i, source_of(sockets + i)));
        overload_plans[(sockets + i) % threads].push_back(
            overload_peers / overload_sockets + (i < overload_peers % overload_sockets ? 1 : 0));
    }
    for (std::size_t t = 0; t < threads; ++t) {
        groups.push_back(std::make_unique<FleetGroup>(
            std::move(fleets[t]), std::move(overload_fleets[t]), o, phase, overload));
        groups.back()->plan = plans[t];
        groups.back()->overload_plan = overload_plans[t];
        groups.back()->silenced = silenced[t];
        groups.back()->sockets = sockets;
        groups.back()->start();
    }
    struct Stopper {
        std::atomic<Phase>& phase;
        std::vector<std::unique_ptr<FleetGroup>>& groups;
        ~Stopper() {
            phase.store(Phase::stop);
            for (auto& g : groups) g->join();
        }
    } stopper{phase, groups};

    const auto wait_for = [&](auto done, double limit_s, const char* what) {
        const TimePoint give_up = Clock::now() + seconds_of(limit_s);
        while (!done()) {
            if (Clock::now() > give_up)
                throw std::runtime_error(fmt::format("{}: timed out", what));
            std::this_thread::sleep_for(10ms);
        }
    };
    const auto all = [&](auto pred) {
        return [&groups, pred] {
            return std::all_of(groups.begin(), groups.end(), [&](auto& g) { return pred(*g); });
        };
    };
    const auto up_count = [&] {
        return floor ? 0 : target.control("status").value("up", std::size_t{0});
    };
    wait_for(all([](const FleetGroup& g) { return g.first_done(); }), o.register_timeout_s,
             "registering the first peers");
    if (!floor && o.up_before > 0)
        wait_for([&] { return up_count() >= o.up_before; }, 60, "first peers up");

    const TimePoint reg_start = Clock::now();
    phase.store(Phase::registering);
    // Past the timeout the run goes on and says how many registered.
    const TimePoint reg_give_up = reg_start + seconds_of(o.register_timeout_s);
    const auto registered_all = all([](const FleetGroup& g) { return g.done(); });
    while (!registered_all() && Clock::now() < reg_give_up) std::this_thread::sleep_for(10ms);
    m.registration_complete = registered_all();
    TimePoint reg_end = m.registration_complete ? reg_start : Clock::now();
    if (m.registration_complete)
        for (auto& g : groups) reg_end = std::max(reg_end, g->done_at());
    m.register_seconds = std::chrono::duration<double>(reg_end - reg_start).count();
    phase.store(Phase::steady);
    // Past capacity not every peer comes up; the run goes on and says so.
    if (!floor) {
        const TimePoint give_up = Clock::now() + (m.registration_complete ? 120s : 0s);
        while (up_count() < total && Clock::now() < give_up) std::this_thread::sleep_for(100ms);
        m.up_before_window = up_count();
    }
    std::this_thread::sleep_for(seconds_of(o.warmup_s));

    // The measured window.
    const auto acks_now = [&] {
        std::uint64_t a = 0;
        for (auto& g : groups) a += g->acks();
        return a;
    };
    // The window's events come from the watch stream, which no rate limit thins.
    if (!floor) target.watch();
    nlohmann::json status0 = floor ? nlohmann::json::object() : target.control("status");
    const double cpu0 = read_sched_times(target.pid()).running;
    const long switches0 = read_memory(target.pid()).ctxt_switches;
    const std::uint64_t acks0 = acks_now();
    const std::uint64_t drops0 = udp_socket_drops(target.port());
    const TimePoint t0 = Clock::now();
    // The window's events in time order: silence, overload on, overload over
    // (back to normal) and kAfterOverloadS after that.
    const double overload_off_s = o.overload_at_s + o.overload_for_s;
    const double window_s = overload_peers > 0
                                ? std::max(o.duration_s, overload_off_s + kAfterOverloadS)
                                : o.duration_s;
    struct Sample {
        nlohmann::json status;
        double cpu = 0;
        std::uint64_t acks = 0, drops = 0;
        TimePoint at{};
    };
    Sample on, off, after;
    const auto sample = [&](Sample& x) {
        x.at = Clock::now();
        x.cpu = read_sched_times(target.pid()).running;
        x.acks = acks_now();
        x.drops = udp_socket_drops(target.port());
        x.status = target.control("status");
    };
    std::vector<std::pair<double, std::function<void()>>> steps;
    if (to_silence > 0) steps.push_back({o.silence_at_s, [&] { phase.store(Phase::silenced); }});
    if (overload_peers > 0) {
        steps.push_back({o.overload_at_s, [&] {
                             sample(on);
                             overload.store(Overload::on);
                         }});
        steps.push_back({overload_off_s, [&] {
                             overload.store(Overload::over);
                             sample(off);
                         }});
        steps.push_back({overload_off_s + kAfterOverloadS, [&] { sample(after); }});
    }
    std::stable_sort(steps.begin(), steps.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [at, step] : steps) {
        std::this_thread::sleep_until(t0 + seconds_of(at));
        step();
    }
    std::this_thread::sleep_until(t0 + seconds_of(window_s));
    const TimePoint t1 = Clock::now();
    const double cpu1 = read_sched_times(target.pid()).running;
    const MemoryStatus mem1 = read_memory(target.pid());
    const std::uint64_t acks1 = acks_now();
    m.elapsed_s = std::chrono::duration<double>(t1 - t0).count();
    m.cpu_s = cpu1 - cpu0;
    m.acks = acks1 - acks0;
    m.rss_kib = mem1.rss_kib;
    m.wakeups_per_s = static_cast<double>(mem1.ctxt_switches - switches0) / m.elapsed_s;
    m.kernel_drops = udp_socket_drops(target.port());
    m.kernel_drops_window = m.kernel_drops - drops0;
    m.silenced = to_silence;
    if (floor) return m;

    // Let the silenced peers be declared down (the window may end before).
    const Duration detection = std::chrono::milliseconds(o.interval_ms) * o.probes;
    const TimePoint give_up = Clock::now() + 2 * detection + 5s;
    nlohmann::json status1 = target.control("status");
    while (event_count(status1, "down") - event_count(status0, "down") < to_silence &&
           Clock::now() < give_up) {
        std::this_thread::sleep_for(50ms);
        status1 = target.control("status");
    }
    m.loop_iterations_per_s =
        static_cast<double>(loop_iterations(status1) - loop_iterations(status0)) / m.elapsed_s;
    if (status1.contains("daemon") && status1["daemon"].contains("loop")) {
        const auto& loop = status1["daemon"]["loop"];
        m.max_timer_lag_us = loop.value("max_timer_lag_us", std::uint64_t{0});
        m.longest_iteration_us = loop.value("longest_iteration_us", std::uint64_t{0});
    }
    m.receive_overflows = daemon_field(status1, "receive_overflows");
    m.verdicts_withheld = daemon_field(status1, "verdicts_withheld");
    m.verdicts_withheld_window = m.verdicts_withheld - daemon_field(status0, "verdicts_withheld");
    m.suspects = event_count(status1, "suspect");
    m.downs = event_count(status1, "down");
    m.registered = status1.value("peers", std::size_t{0});
    m.up_at_end = status1.value("up", std::size_t{0});
    m.down_at_end = status1.value("down", std::size_t{0});
    // Every peer's state_changes, which no rate limit thins, while the fleet
    // still answers (not at 1 M peers: the answer is some 400 bytes a peer).
    std::optional<nlohmann::json> peer_list;
    if (total + overload_peers <= 200'000) peer_list = target.control("peers");
    // Events logged after this are the fleet stopping.
    const TimePoint stopped_at = Clock::now();
    phase.store(Phase::stop);
    for (auto& g : groups) g->join();

    // Each silenced peer: down line arrival - (first unanswered probe + probes x interval).
    const auto downs = target.down_times();
    std::size_t silenced_total = 0;
    for (auto& g : groups)
        for (const auto& f : g->fleets()) {
            m.busy_rejects += f->busy_rejects();
            for (const auto& p : f->peers()) {
                if (!p.silenced) continue;
                ++silenced_total;
                if (!p.first_unanswered) continue;
                const auto it = downs.find(p.name);
                if (it == downs.end()) continue;
                m.detection_error_ms.push_back(
                    ms_between(*p.first_unanswered + detection, it->second));
            }
        }
    for (auto& g : groups)
        for (const auto& f : g->overload_fleets()) m.busy_rejects += f->busy_rejects();
    m.silenced_down = std::min<std::size_t>(m.down_at_end, silenced_total);
    m.events_not_logged =
        daemon_field(status1, "events_not_logged") + daemon_field(status1, "log_records_dropped");

    // False events are counted by name (the watch stream, the log before it): among the
    // peers of the base fleet that never stopped answering. A silenced peer's
    // suspect and down are expected; the overload group is reported apart.
    std::unordered_set<std::string> silenced_names, group_names;
    for (auto& g : groups) {
        for (const auto& f : g->fleets())
            for (const auto& p : f->peers())
                if (p.silenced) silenced_names.insert(p.name);
        for (const auto& f : g->overload_fleets())
            for (const auto& p : f->peers()) group_names.insert(p.name);
    }
    // Before the window, the log's lines (rate-limited); from it on, the watch stream.
    std::vector<PeerEvent> events;
    const TimePoint watched_from = target.watched_from();
    for (auto& e : target.peer_events())
        if (e.at < watched_from) events.push_back(std::move(e));
    for (auto& e : target.watched_events()) events.push_back(std::move(e));
    m.watch_missed = target.watch_missed();
    struct Tally {
        std::size_t suspects = 0, downs = 0;
    };
    // The base fleet's false events whose line arrived in [from, to).
    const auto base_false = [&](TimePoint from, TimePoint to) {
        Tally t;
        for (const auto& e : events) {
            if (e.at < from || e.at >= to || silenced_names.contains(e.name) ||
                group_names.contains(e.name))
                continue;
            t.suspects += e.kind == PeerEvent::Kind::suspect ? 1 : 0;
            t.downs += e.kind == PeerEvent::Kind::down ? 1 : 0;
        }
        return t;
    };
    std::size_t logged_suspects = 0, logged_downs = 0;
    for (const auto& e : events) {
        if (e.at >= stopped_at) continue;
        logged_suspects += e.kind == PeerEvent::Kind::suspect ? 1 : 0;
        logged_downs += e.kind == PeerEvent::Kind::down ? 1 : 0;
    }
    m.unattributed_suspects = m.suspects > logged_suspects ? m.suspects - logged_suspects : 0;
    m.unattributed_downs = m.downs > logged_downs ? m.downs - logged_downs : 0;
    const Tally whole = base_false(TimePoint::min(), stopped_at);
    const Tally in_window = base_false(t0, stopped_at);
    // Without an overload group every event not logged is the base fleet's
    // (or a silenced peer's: counted false, on the safe side).
    const bool attribute_rest = overload_peers == 0;
    m.false_suspects = whole.suspects + (attribute_rest ? m.unattributed_suspects : 0);
    m.false_downs = whole.downs + (attribute_rest ? m.unattributed_downs : 0);
    m.false_suspects_window = in_window.suspects;
    m.false_downs_window = in_window.downs;

    if (peer_list) {
        m.base_peers_changed_state = 0;
        m.group.changed_state = 0;
        for (const auto& p : peer_list->value("peers", nlohmann::json::array())) {
            const std::string name = p.value("name", "");
            const auto changes = p.value("state_changes", std::uint64_t{0});
            if (group_names.contains(name)) {
                // Up at admission and left at its BYE: one change; more was a
                // suspect or down on the way.
                if (p.value("state", "") == "left" && changes > 1) ++m.group.changed_state;
            } else if (!silenced_names.contains(name) && changes > 0) {
                ++m.base_peers_changed_state;
            }
        }
    }

    if (overload_peers > 0) {
        for (auto& g : groups) m.overload_admitted += g->overload_admitted();
        const double span = std::chrono::duration<double>(off.at - on.at).count();
        m.overload_pairs_per_s = static_cast<double>(off.acks - on.acks) / span;
        m.overload_cpu_percent = 100.0 * (off.cpu - on.cpu) / span;
        m.overload_kernel_drops = off.drops - on.drops;
        const Tally during = base_false(on.at, off.at);
        const Tally after_return = base_false(off.at, after.at);
        m.false_suspects_overload = during.suspects;
        m.false_downs_overload = during.downs;
        m.false_suspects_after_overload = after_return.suspects;
        m.false_downs_after_overload = after_return.downs;
        // The group: a suspect or down while it still answered is false; a
        // down after it stopped is what a lost BYE looks like, and right.
        std::unordered_map<std::string_view, std::uint8_t> fate;  // bit 0 left, bit 1 down
        for (const auto& e : events) {
            if (!group_names.contains(e.name)) continue;
            const bool answering = e.at < off.at;
            if (e.kind == PeerEvent::Kind::suspect && answering) ++m.group.suspects_during;
            if (e.kind == PeerEvent::Kind::down) {
                fate[e.name] |= 2;
                if (answering)
                    ++m.group.downs_during;
                else
                    ++m.group.down_after;
            }
            if (e.kind == PeerEvent::Kind::left) fate[e.name] |= 1;
        }
        for (const auto& [name, bits] : fate) {
            m.group.left += bits & 1;
            m.group.down += (bits >> 1) & 1;
        }
        for (auto& g : groups)
            for (const auto& f : g->overload_fleets()) {
                m.group.busy_rejects += f->busy_rejects();
                for (const auto& p : f->peers()) {
                    m.group.admitted += p.session != 0 ? 1 : 0;
                    m.group.still_registering += p.session == 0 && p.reject_diag == 0 ? 1 : 0;
                }
            }
        if (off.status.contains("daemon") && off.status["daemon"].contains("load"))
            m.shedding_at_return = off.status["daemon"]["load"].value("shedding", false);
    }
    if (status1.contains("daemon") && status1["daemon"].contains("load"))
        m.registrations_shed =
            status1["daemon"]["load"].value("registrations_shed", std::uint64_t{0});
    return m;
}

// Nearest rank; 0 for no sample.
double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const auto r = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::clamp<std::size_t>(r, 1, v.size()) - 1];
}

constexpr const char* kUsage =
    "Usage: keepalive-bench [options] [KEEPALIVED]\n"
    "  KEEPALIVED             the daemon (default: $KEEPALIVED, else keepalived beside\n"
    "                         this program, else the installed one)\n"
    "  --peers N              simulated peers (default 2000)\n"
    "  --interval-ms MS       probe interval they ask for (default 1000)\n"
    "  --probes N             probes (default 3)\n"
    "  --duration S           measured window in seconds (default 10)\n"
    "  --warmup S             after all are up, before the window (default 2)\n"
    "  --storm                register all at once, retrying with the agent's backoff\n"
    "                         (1 s doubling to 30 s, jittered; REJECT diag 9 = try later)\n"
    "  --register-window N    paced: handshakes in flight, all sockets together (default 512)\n"
    "  --all-registered       paced: start the warm-up only when the peers told busy\n"
    "                         (REJECT diag 9) are registered too; by default they count\n"
    "                         as done and go on retrying during the window\n"
    "  --up-before N          peers registered and up before the others (default 0)\n"
    "  --register-timeout S   stop waiting for registration after S seconds (default 300;\n"
    "                         the run goes on, registration_complete says so)\n"
    "  --silence F            fraction of the peers that go silent (default 0.01)\n"
    "  --silence-at S         seconds into the window (default 1)\n"
    "  --peers-per-socket N   peers per UDP socket, one 127.1.x.y source each (default 2500)\n"
    "  --threads N            threads playing the sockets (default 2)\n"
    "  --floor PATH           keepalive-floor (default: next to this program, or\n"
    "                         $KEEPALIVE_FLOOR); --no-floor skips it\n"
    "  --floor-tick-ms MS     the floor's timer step (default 5, the daemon's)\n"
    "  --json                 one JSON object on stdout instead of text\n"
    "  --check                exit 1 unless every peer registered, every silenced peer\n"
    "                         went down and no other did (behaviour, not speed); false\n"
    "                         downs are counted by name, the overload group's apart\n"
    "  --log-dir DIR          keep the daemon's and the floor's stderr there\n"
    "  --seed N               (default 1)\n"
    "  --peers-config LINE    a line for the daemon's [peers] table, e.g.\n"
    "                         'shed_busy_percent = 0' (repeatable)\n"
    "  --daemon-arg ARG       one more argument for the daemon, e.g. --log-target=journal\n"
    "                         (repeatable; detection error then is not measured)\n"
    "  --overload-peers N     overload: N more peers arrive at once (the agent's backoff,\n"
    "                         busy = later) --overload-at S into the window (default 2)\n"
    "                         and leave (BYE) --overload-for S later (default 30); the\n"
    "                         window lasts at least until 5 s after they left\n"
    "Runs the daemon, then the floor with the same fleet, each for the same window.\n";

}  // namespace
}  // namespace keepalive

int main(int argc, char** argv) {
    using namespace keepalive;
    signal(SIGPIPE, SIG_IGN);
    Options o;
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    // The daemon: $KEEPALIVED, else the one beside this program (a build
    // tree), else the installed one.
    if (const char* env = std::getenv("KEEPALIVED")) {
        o.daemon = env;
    } else if (!ec && std::filesystem::exists(self.parent_path() / "keepalived")) {
        o.daemon = (self.parent_path() / "keepalived").string();
    } else {
#ifdef KEEPALIVE_INSTALLED_DAEMON
        o.daemon = KEEPALIVE_INSTALLED_DAEMON;
#endif
    }
    if (const char* env = std::getenv("KEEPALIVE_FLOOR")) {
        o.floor = env;
    } else if (!ec) {
        o.floor = (self.parent_path() / "keepalive-floor").string();
    }
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            const auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
                return argv[++i];
            };
            if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            } else if (arg == "--peers") {
                o.peers = std::stoul(value());
            } else if (arg == "--interval-ms") {
                o.interval_ms = static_cast<std::uint32_t>(std::stoul(value()));
            } else if (arg == "--probes") {
                o.probes = static_cast<std::uint8_t>(std::stoul(value()));
            } else if (arg == "--duration") {
                o.duration_s = std::stod(value());
            } else if (arg == "--warmup") {
                o.warmup_s = std::stod(value());
            } else if (arg == "--storm") {
                o.storm = true;
            } else if (arg == "--all-registered") {
                o.all_registered = true;
            } else if (arg == "--register-window") {
                o.register_window = std::max<std::size_t>(1, std::stoul(value()));
            } else if (arg == "--up-before") {
                o.up_before = std::stoul(value());
            } else if (arg == "--silence") {
                o.silence_fraction = std::clamp(std::stod(value()), 0.0, 1.0);
            } else if (arg == "--silence-at") {
                o.silence_at_s = std::stod(value());
            } else if (arg == "--peers-per-socket") {
                o.peers_per_socket = std::max<std::size_t>(1, std::stoul(value()));
            } else if (arg == "--threads") {
                o.threads = std::max<std::size_t>(1, std::stoul(value()));
            } else if (arg == "--floor") {
                o.floor = value();
            } else if (arg == "--floor-tick-ms") {
                o.floor_tick_ms = static_cast<std::uint32_t>(std::max(1ul, std::stoul(value())));
            } else if (arg == "--no-floor") {
                o.run_floor = false;
            } else if (arg == "--check") {
                o.check = true;
            } else if (arg == "--json") {
                o.json = true;
            } else if (arg == "--log-dir") {
                o.log_dir = value();
            } else if (arg == "--seed") {
                o.seed = std::stoull(value());
            } else if (arg == "--daemon-arg") {
                o.daemon_args.push_back(value());
            } else if (arg == "--register-timeout") {
                o.register_timeout_s = std::stod(value());
            } else if (arg == "--overload-peers") {
                o.overload_peers = std::stoul(value());
            } else if (arg == "--overload-at") {
                o.overload_at_s = std::max(0.0, std::stod(value()));
            } else if (arg == "--overload-for") {
                o.overload_for_s = std::max(0.0, std::stod(value()));
            } else if (arg == "--peers-config") {
                o.peers_config += value() + "\n";
            } else if (!arg.empty() && arg[0] != '-' && i == argc - 1) {
                o.daemon = arg;
            } else {
                throw std::invalid_argument("unknown argument " + arg);
            }
        }
        if (o.peers == 0 || o.interval_ms == 0 || o.probes == 0 || o.duration_s <= 0)
            throw std::invalid_argument("peers, interval, probes and duration must be positive");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "keepalive-bench: %s\n%s", e.what(), kUsage);
        return 2;
    }
    if (o.daemon.empty()) {
        std::fprintf(stderr, "keepalive-bench: no daemon: pass its path or set KEEPALIVED\n%s",
                     kUsage);
        return 2;
    }
    try {
        const Measured d = run(o, false);
        Measured f;
        if (o.run_floor) f = run(o, true);
        const std::size_t total = o.peers + o.up_before;
        const double rss_per_peer =
            static_cast<double>(d.rss_kib - d.rss_base_kib) * 1024.0 / static_cast<double>(total);
        const double floor_ratio =
            o.run_floor && f.cpu_per_pair_us() > 0 ? d.cpu_per_pair_us() / f.cpu_per_pair_us() : 0;
        const auto& err = d.detection_error_ms;
        nlohmann::json j = {
            {"peers", total},
            {"interval_ms", o.interval_ms},
            {"probes", o.probes},
            {"duration_s", d.elapsed_s},
            {"storm", o.storm},
            {"daemon_cpu_percent", 100.0 * d.cpu_s / d.elapsed_s},
            {"daemon_cpu_us_per_pair", d.cpu_per_pair_us()},
            {"daemon_rss_bytes", d.rss_kib * 1024},
            {"rss_per_peer_bytes", rss_per_peer},
            {"pairs_per_s", static_cast<double>(d.acks) / d.elapsed_s},
            {"floor_cpu_percent", o.run_floor ? 100.0 * f.cpu_s / f.elapsed_s : 0.0},
            {"floor_cpu_us_per_pair", f.cpu_per_pair_us()},
            {"floor_ratio", floor_ratio},
            {"wakeups_per_s", d.wakeups_per_s},
            {"loop_iterations_per_s", d.loop_iterations_per_s},
            {"floor_wakeups_per_s", f.wakeups_per_s},
            {"floor_kernel_drops_window", f.kernel_drops_window},
            {"silenced", d.silenced},
            {"silenced_down", d.silenced_down},
            {"detection_samples", err.size()},
            {"detection_error_ms_p50", percentile(err, 0.5)},
            {"detection_error_ms_p99", percentile(err, 0.99)},
            {"detection_error_ms_max", percentile(err, 1.0)},
            {"false_suspects", d.false_suspects},
            {"false_downs", d.false_downs},
            {"false_suspects_window", d.false_suspects_window},
            {"false_downs_window", d.false_downs_window},
            {"registered", d.registered},
            {"up_before_window", d.up_before_window},
            {"up_at_end", d.up_at_end},
            {"register_seconds", d.register_seconds},
            {"registration_complete", d.registration_complete},
            {"busy_rejects", d.busy_rejects},
            {"kernel_drops", d.kernel_drops},
            {"kernel_drops_window", d.kernel_drops_window},
            {"verdicts_withheld_window", d.verdicts_withheld_window},
            {"max_timer_lag_us", d.max_timer_lag_us},
            {"longest_iteration_us", d.longest_iteration_us},
            {"receive_overflows", d.receive_overflows},
            {"verdicts_withheld", d.verdicts_withheld},
            {"registrations_shed", d.registrations_shed},
            {"events_not_logged", d.events_not_logged},
            {"watch_missed", d.watch_missed},
            {"unattributed_suspects", d.unattributed_suspects},
            {"unattributed_downs", d.unattributed_downs},
            {"base_peers_changed_state", d.base_peers_changed_state},
        };
        if (o.overload_peers > 0) {
            const double per_s = 1000.0 / o.interval_ms;
            j["overload"] = {
                {"peers", o.overload_peers},
                {"at_s", o.overload_at_s},
                {"for_s", o.overload_for_s},
                {"offered_pairs_per_s_before", static_cast<double>(total) * per_s},
                {"offered_pairs_per_s", static_cast<double>(total + o.overload_peers) * per_s},
                {"admitted", d.overload_admitted},
                {"pairs_per_s", d.overload_pairs_per_s},
                {"daemon_cpu_percent", d.overload_cpu_percent},
                {"kernel_drops", d.overload_kernel_drops},
                {"false_suspects", d.false_suspects_overload},
                {"false_downs", d.false_downs_overload},
                {"shedding_at_return", d.shedding_at_return},
                {"false_downs_after", d.false_downs_after_overload},
                {"group",
                 {{"admitted", d.group.admitted},
                  {"left", d.group.left},
                  {"down", d.group.down},
                  {"down_after_leaving", d.group.down_after},
                  {"false_suspects", d.group.suspects_during},
                  {"false_downs", d.group.downs_during},
                  {"never_admitted", d.group.still_registering},
                  {"busy_rejects", d.group.busy_rejects},
                  {"left_after_changing_state", d.group.changed_state}}},
            };
            j["false_suspects_after_overload"] = d.false_suspects_after_overload;
        }
        if (o.json) {
            std::puts(j.dump().c_str());
        } else {
            for (const auto& [key, value] : j.items())
                std::printf("%-24s %s\n", key.c_str(), value.dump().c_str());
        }
        if (o.check) {
            std::string failed;
            // Overload peers that were admitted stay in the table as "left".
            if (d.registered != total + d.overload_admitted)
                failed +=
                    fmt::format(" registered {} of {};", d.registered, total + d.overload_admitted);
            if (d.silenced_down != d.silenced)
                failed +=
                    fmt::format(" {} of {} silenced peers down;", d.silenced_down, d.silenced);
            if (d.false_downs != 0) failed += fmt::format(" {} false downs;", d.false_downs);
            if (o.overload_peers > 0 && d.watch_missed != 0)
                failed += fmt::format(" the event stream missed {} events: counts incomplete;",
                                      d.watch_missed);
            if (d.group.downs_during != 0)
                failed +=
                    fmt::format(" {} overload peers down while answering;", d.group.downs_during);
            if (d.false_suspects_after_overload != 0)
                failed += fmt::format(" {} false suspects after the overload;",
                                      d.false_suspects_after_overload);
            if (!failed.empty()) {
                std::fprintf(stderr, "keepalive-bench: check failed:%s\n", failed.c_str());
                return 1;
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "keepalive-bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
