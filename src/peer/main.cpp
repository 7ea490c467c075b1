// keepalive-peer: registers with a keepalived server and answers its probes.
#include <getopt.h>
#include <signal.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

#include <charconv>
#include <cstdio>
#include <exception>
#include <string>

#include "core/duration.hpp"
#include "keepalive/client.hpp"
#include "net/event_loop.hpp"

using namespace keepalive;

namespace {

constexpr const char* kUsage =
    "Usage: keepalive-peer --server HOST:PORT --name NAME [--interval DURATION] [--probes N]\n"
    "                      [--bind ADDR] [--log-target auto|journal|stderr]\n"
    "\n"
    "Registers NAME with a keepalived server and answers its probes until stopped.\n"
    "  -s, --server HOST:PORT   the server (port defaults to 7371)\n"
    "  -n, --name NAME          1-64 of A-Z a-z 0-9 . _ - : @\n"
    "  -i, --interval DURATION  probe interval asked for, e.g. 200ms, 1s (default 1s)\n"
    "  -p, --probes N           unanswered probes before down, 1-255 (default 3)\n"
    "  -b, --bind ADDR          local address (and port) to use\n"
    "  -l, --log-target TARGET  auto, journal or stderr\n"
    "  -h, --help               this text\n";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "keepalive-peer: %s\n%s", message.c_str(), kUsage);
    return 2;
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
    for (int s : {SIGTERM, SIGINT}) sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);

    ClientOptions options;
    std::string log_target = "auto";
    static const option long_options[] = {
        {"server", required_argument, nullptr, 's'},  {"name", required_argument, nullptr, 'n'},
        {"interval", required_argument, nullptr, 'i'}, {"probes", required_argument, nullptr, 'p'},
        {"bind", required_argument, nullptr, 'b'},    {"log-target", required_argument, nullptr, 'l'},
        {"help", no_argument, nullptr, 'h'},          {nullptr, 0, nullptr, 0},
    };
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "s:n:i:p:b:l:h", long_options, nullptr)) != -1) {
        const std::string arg = optarg ? optarg : "";
        switch (opt) {
            case 's': options.server = arg; break;
            case 'n': options.name = arg; break;
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
            case 'b': options.bind = arg; break;
            case 'l':
                if (arg != "auto" && arg != "journal" && arg != "stderr")
                    return usage_error("--log-target must be auto, journal or stderr");
                log_target = arg;
                break;
            case 'h': std::fputs(kUsage, stdout); return 0;
            default:
                return usage_error(optopt ? std::string("bad option -") + static_cast<char>(optopt)
                                          : std::string("bad option ") + argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error(std::string("unexpected argument: ") + argv[optind]);
    if (options.server.empty() || options.name.empty())
        return usage_error("--server and --name are required");

    const bool to_journal = journal_wanted(log_target);
    auto log = [to_journal](int priority, const std::string& message) {
        if (to_journal) {
            sd_journal_print(priority, "%s", message.c_str());
        } else {
            std::fprintf(stderr, "<%d>%s\n", priority, message.c_str());
            std::fflush(stderr);
        }
    };

    std::unique_ptr<Client> client;
    try {
        client = std::make_unique<Client>(options, [&](const ClientNotice& n) {
            const bool bad = n.event == ClientEvent::lost || n.event == ClientEvent::rejected;
            log(bad ? LOG_WARNING : LOG_INFO, n.message);
        });
    } catch (const std::invalid_argument& e) {
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

    log(LOG_INFO, "keepalive-peer " + options.name + " starting: server " +
                      client->server_address() + ", local " + client->local_address());
    client->start();
    loop.arm_timer(timer, client->next_deadline());
    loop.run();
    return 0;
}
