// The daemon: the event loop, the UDP listeners and the control socket wired
// to the protocol core, with systemd notification and reloads.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/server.hpp"
#include "core/sleep_detector.hpp"
#include "daemon/config.hpp"
#include "daemon/control.hpp"
#include "daemon/event_ring.hpp"
#include "daemon/event_throttle.hpp"
#include "daemon/hooks.hpp"
#include "daemon/log.hpp"
#include "daemon/metrics.hpp"
#include "daemon/state_store.hpp"
#include "daemon/targets.hpp"
#include "daemon/watch.hpp"
#include "net/event_loop.hpp"
#include "net/sys.hpp"
#include "net/udp_socket.hpp"

namespace keepalive {

// sd_notify(3) and the fd store, through libsystemd.
sys::Notifier& systemd_notifier();

class Daemon final : private ServerSink {
public:
    // Binds every configured address, the sockets passed by systemd socket
    // activation, and the control socket; throws std::runtime_error on failure.
    // Every epoll, timerfd and socket call of the running daemon goes through
    // `ops`, every message to the service manager through `notifier` (both
    // must outlive the daemon): tests drive it in-process with a fake clock
    // and inject system call failures.
    Daemon(Config config, Logger& log, const ClockSource& clock, RandomSource& random,
           sys::Ops& ops = sys::system(), sys::Notifier& notifier = systemd_notifier());
    ~Daemon() override;
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    // start(), then run_once(nullopt) until SIGTERM/SIGINT; returns the exit code.
    int run();
    // Sends READY=1 and arms the wheel: call once, before the first run_once().
    void start();
    // One iteration of the event loop (EventLoop::run_once). Never throws:
    // after READY every handler counts and logs its failures.
    void run_once(std::optional<Duration> timeout);
    // Peers a periodic save writes per loop iteration: about a millisecond's work.
    static constexpr std::size_t kSavePeersPerStep = 1024;

    // A stop was asked for (signal, or "shutdown-for-good"): run() returns.
    bool stopping() const { return stopping_; }
    // The `keepalivectl status --json` answer, as the control socket gives it.
    nlohmann::json status() const;

private:
    // What a socket's datagrams are: KAP/1, or the Go module's registrations
    // (its port 5001) or probe replies (its port 5002).
    enum class Kind { kap1, legacy_register, legacy_probe };
    struct Endpoint {
        Address address;
        Kind kind;
        friend bool operator==(const Endpoint&, const Endpoint&) = default;
    };
    struct Listener {
        std::optional<Endpoint> configured;  // none for a socket from systemd
        UdpSocket socket;
        std::string fd_store_name;  // kept in systemd's fd store under this name
    };
    static std::vector<Endpoint> endpoints(const Config& config);

    // Sockets from socket activation, and the sockets and saved state the
    // previous process left in systemd's fd store.
    void adopt_passed_fds();
    // Restart without flaps (state_store.hpp): take over the saved sessions,
    // save them (debounced) as they change, and keep the sockets in the fd store.
    void restore_state();
    void state_changed();
    // At stop, whole, to every store. True if a copy was written.
    bool save_final();
    // The periodic save, streamed: begun by state_timer_, then one piece of
    // kSavePeersPerStep peers per loop iteration (state_store.hpp).
    void begin_periodic_save();
    void save_step();
    void arm_next_save(TimePoint now);
    Address listener_address(std::uint32_t id) const;
    void keep_in_fd_store(Listener& listener);
    // Opens the listeners in `wanted` that are not open yet and closes the
    // configured ones not in it. All or nothing: on a bind failure nothing changes.
    Result<bool, std::string> reconcile_listeners(const std::vector<Endpoint>& wanted);
    void add_listener(std::optional<Endpoint> configured, UdpSocket socket,
                      std::string fd_store_name = {});
    std::optional<std::uint32_t> legacy_probe_listener() const;
    // Reads and handles up to max_batches batches; a socket with more left
    // goes on backlogged_. True if anything was read.
    bool read_socket(std::uint32_t id, int max_batches);
    void defer_reads();
    bool resume_reads();
    void on_send_errors(std::uint32_t id);
    void after_work();
    void flush(std::uint32_t id) noexcept;
    void reload();
    void reload_config();
    // for_good: BYE 5 and the saved state discarded; else BYE 8 when the
    // sessions are saved for the next process.
    void stop(bool for_good = false);
    void notify_status();
    PeerCounts counts() const;
    ControlServer::Producer control_request(std::string_view request);
    void notify(const std::string& state);
    std::unique_ptr<ControlServer> make_control_server(const std::string& path);
    // False after calling `failed` if there is no memory for `max_peers` peers.
    bool reserve_peers(std::uint32_t max_peers,
                       const std::function<void(const std::string&)>& failed);
    // The new server, or nullptr after calling `failed` with the reason.
    std::unique_ptr<ControlServer> try_control_server(
        const std::string& path, const std::function<void(const std::string&)>& failed);
    void log_throttle_summary();
    // One line when shedding starts and one when it ends (with what was shed).
    void log_shedding();
    std::vector<std::string> listen_addresses() const;
    DaemonStats stats() const;
    void write_metrics_file();

    void send(const Route& route, const Address& to,
              std::span<const std::uint8_t> data) noexcept override;
    void peer_event(const PeerEvent& event) override;

    Config config_;
    Logger& log_;
    const ClockSource& clock_;
    sys::Notifier& notifier_;
    std::uint64_t notify_failures_ = 0;
    EventLoop loop_;
    ServerCore core_;
    TimePoint started_;

    std::map<std::uint32_t, Listener> listeners_;
    std::uint32_t next_listener_id_ = 1;
    std::map<std::uint32_t, std::vector<OutDatagram>> outbox_;  // one queue per listener
    std::uint64_t unroutable_ = 0;
    std::vector<std::uint32_t> backlogged_;  // listeners with datagrams left unread

    // Before control_: its watch streams read the ring through watchers_.
    EventRing ring_;
    Watchers watchers_{ring_};
    std::unique_ptr<HookRunner> hooks_;
    bool wake_watchers_ = false;
    std::unique_ptr<TargetSet> targets_;  // after core_: it checks names against them
    StateStore state_;
    EventLoop::TimerId state_timer_;      // the next periodic save is due
    EventLoop::TimerId save_step_timer_;  // armed to now while a save is in progress
    PeerTable::Slot save_cursor_ = 0;     // the table's next slot to save
    TimePoint save_as_of_{};              // when the save in progress began
    Duration save_started_{};             // the same, in wall time
    bool save_again_ = false;             // a save fell due while one was in progress
    PeerRecord save_record_;              // reused for every record

    std::unique_ptr<ControlServer> control_;
    EventLoop::TimerId wheel_timer_;
    TimePoint wheel_deadline_{};  // what wheel_timer_ was last armed to
    TimePoint last_wheel_fire_{};
    bool wheel_behind_ = false;  // the last step stopped at the core's limit: the next is at once
    EventLoop::TimerId read_timer_;
    bool reads_deferred_ = false;  // the sockets' EPOLLIN is off until the next step
    EventLoop::TimerId summary_timer_;
    EventLoop::TimerId log_timer_;
    EventThrottle throttle_;
    std::array<std::uint64_t, kEventKindCount> event_counts_{};

    struct LoopStats {
        std::uint64_t iterations = 0;
        Duration longest{};
        std::uint64_t over_1ms = 0;
        std::uint64_t over_5ms = 0;
        std::uint64_t over_20ms = 0;
        Duration max_lag{};
        void record(Duration busy);
    };
    LoopStats stats_;
    // Saves of the peer table (periodic and final), for status.
    struct SaveStats {
        std::uint64_t saves = 0;
        std::uint64_t failures = 0;  // no copy written
        std::size_t last_peers = 0;
        Duration last_duration{};  // wall time from the first step to the last
        std::uint64_t last_steps = 0;
        Duration longest_step{};  // wall time, the disk's waits included
        std::uint64_t steps = 0;  // of the save in progress
        void record_step(Duration wall);
        void finished(std::size_t peers, Duration wall, bool saved);
    };
    SaveStats save_stats_;
    EventLoop::TimerId watchdog_timer_;
    EventLoop::TimerId metrics_timer_;
    Duration last_lag_{};            // how late wheel_timer_ ran last time
    Duration reported_lag_{};        // the worst lag as STATUS= last showed it
    SleepDetector sleep_;            // read on each wheel firing
    bool shedding_ = false;          // as last logged by log_shedding()
    TimePoint shed_logged_at_{};     // the last line log_shedding() wrote
    std::uint64_t shed_logged_ = 0;  // registrations_shed() as of that line
    TimePoint shedding_since_{};     // the first episode that line has not reported
    Duration watchdog_period_{};
    bool status_dirty_ = true;
    bool stopping_ = false;
};

}  // namespace keepalive
