// keepalive-peer: registers with a keepalived server and answers its probes.
#include <getopt.h>
#include <signal.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

#include <charconv>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>

#include "core/duration.hpp"
#include "core/legacy_peer.hpp"
#include "core/peer.hpp"
#include "keepalive/client.hpp"
#include "net/event_loop.hpp"
#include "net/udp_socket.hpp"

using namespace keepalive;

namespace {

constexpr const char* kUsage =
    "Usage: keepalive-peer --server HOST:PORT --name NAME [--interval DURATION] [--probes N]\n"
    "                      [--bind ADDR] [--keys-file FILE] [--log-target auto|journal|stderr]\n"
    "       keepalive-peer --legacy --server IP --name NAME [--interval DURATION] [--probes N]\n"
    "                      [--bind IP] [--legacy-ports REGISTER:PROBE]\n"
    "\n"
    "Registers NAME with a keepalived server and answers its probes until stopped.\n"
    "  -s, --server HOST:PORT   the server (port defaults to 7371)\n"
    "  -n, --name NAME          1-64 of A-Z a-z 0-9 . _ - : @\n"
    "  -i, --interval DURATION  probe interval asked for, e.g. 200ms, 1s (default 1s)\n"
    "  -p, --probes N           unanswered probes before down, 1-255 (default 3)\n"
    "  -b, --bind ADDR          local address (and port) to use\n"
    "  -k, --keys-file FILE     authenticate with the keys in FILE (\"ID HEX-KEY\" lines,\n"
    "                           mode 0600); default $KEEPALIVE_KEYS_FILE; SIGHUP re-reads it\n"
    "  -l, --log-target TARGET  auto, journal or stderr\n"
    "      --legacy             speak the old Go keepalive module's protocol (IPv4, UDP ports\n"
    "                           5001/5002 on both sides, whole-second intervals)\n"
    "      --legacy-ports R:P   other ports for --legacy (default 5001:5002)\n"
    "  -h, --help               this text\n";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "keepalive-peer: %s\n%s", message.c_str(), kUsage);
    return 2;
}

using LogFn = std::function<void(int, const std::string&)>;

// The old protocol: register from an ephemeral port to server:5001, be probed
// on our IP:5002 from server:5002, answer from IP:5002. It has no goodbye.
int run_legacy(const ClientOptions& options, std::uint16_t register_port, std::uint16_t probe_port,
               const LogFn& log) {
    const auto server = Address::parse_host(options.server, register_port);
    if (!server || server->family() != Address::Family::v4) {
        std::fprintf(stderr, "keepalive-peer: --legacy needs an IPv4 --server address\n%s", kUsage);
        return 2;
    }
    const auto local =
        options.bind.empty() ? Address::v4(0, 0) : Address::parse_host(options.bind, 0);
    if (!local || local->family() != Address::Family::v4) {
        std::fprintf(stderr, "keepalive-peer: --legacy needs an IPv4 --bind address\n%s", kUsage);
        return 2;
    }
    Address probe_local = *local;
    probe_local.set_port(probe_port);
    auto reg_socket = UdpSocket::bind(*local);
    auto probe_socket = UdpSocket::bind(probe_local);
    if (!reg_socket || !probe_socket) {
        log(LOG_ERR, "cannot start: " + (reg_socket ? probe_socket.error() : reg_socket.error()));
        return 1;
    }
    Address server_probe = *server;
    server_probe.set_port(probe_port);

    struct Sink final : LegacyPeerSink {
        UdpSocket& reg;
        UdpSocket& probe;
        Address to_register;
        Address to_probe;
        const LogFn& log;
        const ClientOptions& options;
        Sink(UdpSocket& r, UdpSocket& p, Address a, Address b, const LogFn& l,
             const ClientOptions& o)
            : reg(r), probe(p), to_register(a), to_probe(b), log(l), options(o) {}
        void send_registration(std::span<const std::uint8_t> d) override {
            reg.send_to(to_register, d);
        }
        void send_reply(std::span<const std::uint8_t> d) override { probe.send_to(to_probe, d); }
        void legacy_event(Event e) override {
            switch (e) {
                case Event::probed:
                    log(LOG_INFO, "legacy server " + to_register.host_string() + " is probing " +
                                      options.name);
                    break;
                case Event::lost:
                    log(LOG_WARNING, "legacy server " + to_register.host_string() +
                                         " went quiet: registering again");
                    break;
                case Event::retrying:
                    log(LOG_NOTICE, "no probe from legacy server " + to_register.host_string() +
                                        " yet: registering again");
                    break;
            }
        }
    } sink(*reg_socket, *probe_socket, *server, server_probe, log, options);

    SystemRandom random;
    const auto interval_s = static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::seconds>(options.interval).count());
    LegacyPeerSession session({options.name, interval_s, options.probes}, random, sink);

    SystemClock clock;
    EventLoop loop(clock);
    EventLoop::TimerId timer = 0;
    timer = loop.add_timer([&] {
        session.on_timer(loop.now());
        loop.arm_timer(timer, session.next_deadline());
    });
    loop.add_fd(probe_socket->fd(), EPOLLIN, [&](std::uint32_t) {
        probe_socket->receive_batch([&](const UdpSocket::Received& r) {
            // Like the old client's connected socket: only the server's IP:5002.
            if (r.from == server_probe && !r.truncated) session.on_probe(r.data, loop.now());
        });
        loop.arm_timer(timer, session.next_deadline());
    });
    // The old server never answers on this socket; read and discard.
    loop.add_fd(reg_socket->fd(), EPOLLIN, [&](std::uint32_t) {
        reg_socket->receive_batch([](const UdpSocket::Received&) {});
    });
    const auto quit = [&] {
        log(LOG_INFO, "stopping (the legacy protocol has no goodbye)");
        loop.stop();
    };
    loop.on_signal(SIGTERM, quit);
    loop.on_signal(SIGINT, quit);

    log(LOG_INFO, "keepalive-peer " + options.name + " (legacy) registering with " +
                      server->host_string() + ", probes expected on " +
                      probe_socket->local().to_string());
    session.start(clock.now());
    loop.arm_timer(timer, session.next_deadline());
    loop.run();
    return 0;
}

bool journal_wanted(const std::string& target) {
    if (target == "journal") return true;
    if (target == "stderr") return false;
    return std::getenv("JOURNAL_STREAM") != nullptr;
}

}  // namespace

int main(int argc, char** argv) {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);

    ClientOptions options;
    // Set by a systemd drop-in, e.g. Environment=KEEPALIVE_KEYS_FILE=%d/keys with LoadCredential=.
    if (const char* keys = std::getenv("KEEPALIVE_KEYS_FILE")) options.keys_file = keys;
    std::string log_target = "auto";
    bool legacy_mode = false;
    std::uint16_t register_port = legacy::kRegisterPort;
    std::uint16_t probe_port = legacy::kProbePort;
    static const option long_options[] = {
        {"server", required_argument, nullptr, 's'},
        {"name", required_argument, nullptr, 'n'},
        {"interval", required_argument, nullptr, 'i'},
        {"probes", required_argument, nullptr, 'p'},
        {"bind", required_argument, nullptr, 'b'},
        {"keys-file", required_argument, nullptr, 'k'},
        {"log-target", required_argument, nullptr, 'l'},
        {"help", no_argument, nullptr, 'h'},
        {"legacy", no_argument, nullptr, 'L'},
        {"legacy-ports", required_argument, nullptr, 'P'},
        {nullptr, 0, nullptr, 0},
    };
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "s:n:i:p:b:k:l:h", long_options, nullptr)) != -1) {
        const std::string arg = optarg ? optarg : "";
        switch (opt) {
            case 's':
                options.server = arg;
                break;
            case 'n':
                options.name = arg;
                break;
            case 'i': {
                const auto d = parse_duration(arg);
                if (!d || *d < std::chrono::milliseconds(1) || *d > std::chrono::hours(1) ||
                    *d % std::chrono::milliseconds(1) != Duration::zero())
                    return usage_error("--interval must be a duration from 1ms to 1h, like 500ms");
                options.interval = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
                break;
            }
            case 'p': {
                unsigned v = 0;
                auto [p, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), v);
                if (ec != std::errc{} || p != arg.data() + arg.size() || v < 1 || v > 255)
                    return usage_error("--probes must be an integer from 1 to 255");
                options.probes = v;
                break;
            }
            case 'b':
                options.bind = arg;
                break;
            case 'k':
                if (arg.empty()) return usage_error("--keys-file needs a file name");
                options.keys_file = arg;
                break;
            case 'l':
                if (arg != "auto" && arg != "journal" && arg != "stderr")
                    return usage_error("--log-target must be auto, journal or stderr");
                log_target = arg;
                break;
            case 'L':
                legacy_mode = true;
                break;
            case 'P': {
                unsigned r = 0;
                unsigned p = 0;
                char extra = 0;
                if (std::sscanf(arg.c_str(), "%u:%u%c", &r, &p, &extra) != 2 || r < 1 ||
                    r > 65535 || p < 1 || p > 65535 || r == p)
                    return usage_error(
                        "--legacy-ports must be REGISTER:PROBE, two different ports");
                register_port = static_cast<std::uint16_t>(r);
                probe_port = static_cast<std::uint16_t>(p);
                break;
            }
            case 'h':
                std::fputs(kUsage, stdout);
                return 0;
            default:
                return usage_error(optopt ? std::string("bad option -") + static_cast<char>(optopt)
                                          : std::string("bad option ") + argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error(std::string("unexpected argument: ") + argv[optind]);
    if (options.server.empty() || options.name.empty())
        return usage_error("--server and --name are required");

    const bool to_journal = journal_wanted(log_target);
    const LogFn log = [to_journal](int priority, const std::string& message) {
        if (to_journal) {
            sd_journal_print(priority, "%s", message.c_str());
        } else {
            std::fprintf(stderr, "<%d>%s\n", priority, message.c_str());
            std::fflush(stderr);
        }
    };

    if (legacy_mode) {
        if (!options.keys_file.empty())
            return usage_error("--legacy cannot authenticate: the legacy protocol has no keys");
        if (options.interval % std::chrono::seconds(1) != std::chrono::milliseconds::zero())
            return usage_error("--legacy needs an interval in whole seconds");
        if (!valid_peer_name(options.name) || options.name.find(':') != std::string::npos)
            return usage_error("--legacy needs a name of A-Z a-z 0-9 . _ - @ (no ':')");
        return run_legacy(options, register_port, probe_port, log);
    }

    std::unique_ptr<Client> client;
    try {
        client = std::make_unique<Client>(options, [&](const ClientNotice& n) {
            const bool busy = n.event == ClientEvent::rejected && n.diag == 9;
            const bool bad =
                n.event == ClientEvent::lost || (n.event == ClientEvent::rejected && !busy);
            log(bad ? LOG_WARNING : LOG_INFO, n.message);
        });
    } catch (const std::invalid_argument& e) {
        // A keys file that cannot be used is a configuration error, not a usage one.
        if (!options.keys_file.empty() &&
            std::string_view(e.what()).starts_with(options.keys_file)) {
            log(LOG_ERR, std::string("cannot start: ") + e.what());
            return 1;
        }
        return usage_error(e.what());
    } catch (const std::exception& e) {
        log(LOG_ERR, std::string("cannot start: ") + e.what());
        return 1;
    }

    SystemClock clock;
    EventLoop loop(clock);
    EventLoop::TimerId timer = 0;
    timer = loop.add_timer([&] {
        client->on_timeout();
        loop.arm_timer(timer, client->next_deadline());
    });
    loop.add_fd(client->fd(), EPOLLIN, [&](std::uint32_t) {
        client->on_readable();
        loop.arm_timer(timer, client->next_deadline());
    });
    const auto quit = [&] {
        client->stop();
        log(LOG_INFO, "stopping: said goodbye to the server");
        loop.stop();
    };
    loop.on_signal(SIGTERM, quit);
    loop.on_signal(SIGINT, quit);
    loop.on_signal(SIGHUP, [&] {
        if (options.keys_file.empty()) return;
        try {
            client->reload_keys();
            log(LOG_INFO, "keys re-read from " + options.keys_file);
        } catch (const std::invalid_argument& e) {
            log(LOG_ERR, std::string("keeping the old keys: ") + e.what());
        }
    });

    log(LOG_INFO, "keepalive-peer " + options.name + " starting: server " +
                      client->server_address() + ", local " + client->local_address() +
                      (options.keys_file.empty() ? "" : ", keys " + options.keys_file));
    client->start();
    loop.arm_timer(timer, client->next_deadline());
    loop.run();
    return 0;
}
