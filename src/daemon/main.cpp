// keepalived: watches KAP/1 peers over UDP and reports which are alive.
#include <getopt.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "core/random.hpp"
#include "daemon/config.hpp"
#include "daemon/daemon.hpp"
#include "daemon/log.hpp"

using namespace keepalive;

namespace {

constexpr const char* kUsage =
    "Usage: keepalived [--config FILE] [--log-target auto|journal|stderr]\n"
    "       keepalived --check-config FILE\n"
    "       keepalived --help | --version\n"
    "\n"
    "Watches the peers that register over UDP (KAP/1) and reports which are alive.\n"
    "  -c, --config FILE        configuration (default /etc/keepalived/keepalived.toml)\n"
    "  -t, --check-config FILE  validate FILE and exit: 0 valid, 1 invalid\n"
    "  -l, --log-target TARGET  auto (journal under systemd, else stderr), journal, stderr\n"
    "  -h, --help               this text\n"
    "  -V, --version            the version\n";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "keepalived: %s\n%s", message.c_str(), kUsage);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    // Signals are read through the loop's signalfd; block them before anything
    // else so that none arrives with its default action.
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal(SIGPIPE, SIG_IGN);

    std::string config_path = kDefaultConfigPath;
    std::string check_path;
    LogTarget target = LogTarget::automatic;

    static const option options[] = {
        {"config", required_argument, nullptr, 'c'},
        {"check-config", required_argument, nullptr, 't'},
        {"log-target", required_argument, nullptr, 'l'},
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {nullptr, 0, nullptr, 0},
    };
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:t:l:hV", options, nullptr)) != -1) {
        switch (opt) {
            case 'c':
                config_path = optarg;
                break;
            case 't':
                check_path = optarg;
                break;
            case 'l': {
                const auto t = parse_log_target(optarg);
                if (!t) return usage_error(std::string("unknown log target: ") + optarg);
                target = *t;
                break;
            }
            case 'h':
                std::fputs(kUsage, stdout);
                return 0;
            case 'V':
                std::puts("keepalived " KEEPALIVE_VERSION);
                return 0;
            default:
                return usage_error(optopt ? std::string("bad option -") + static_cast<char>(optopt)
                                          : std::string("bad option ") + argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error(std::string("unexpected argument: ") + argv[optind]);

    if (!check_path.empty()) {
        const auto config = load_config(check_path);
        if (!config) {
            std::fprintf(stderr, "%s\n", config.error().to_string().c_str());
            return 1;
        }
        std::printf("%s: OK\n", check_path.c_str());
        return 0;
    }

    Logger log(target);
    SystemClock clock;
    SystemRandom random;
    std::unique_ptr<Daemon> daemon;
    try {
        auto config = load_config(config_path);
        if (!config) {
            log.log(LOG_ERR, config.error().to_string());
            return 1;
        }
        daemon = std::make_unique<Daemon>(std::move(*config), log, clock, random);
    } catch (const std::exception& e) {
        log.logf(LOG_ERR, "cannot start: {}", e.what());
        sd_notifyf(0, "STATUS=cannot start: %s", e.what());
        return 1;
    }
    try {
        return daemon->run();
    } catch (const std::exception& e) {
        // After READY the handlers count and log what fails instead of
        // throwing: this is a bug. Exit, and let the service manager restart
        // us with the sessions saved, rather than run on in a state nobody
        // checked.
        log.logf(LOG_CRIT, "fatal: {}", e.what());
        sd_notifyf(0, "STATUS=fatal: %s", e.what());
        return 1;
    }
}
