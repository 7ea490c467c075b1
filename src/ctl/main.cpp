// keepalivectl: asks the running keepalived about its peers.
#include <fmt/format.h>
#include <getopt.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>

namespace {

constexpr const char* kDefaultSocket = "/run/keepalived/control.sock";
constexpr int kTimeoutMs = 5000;

constexpr const char* kUsage =
    "Usage: keepalivectl [--socket PATH] status|peers|targets [--json]\n"
    "       keepalivectl [--socket PATH] shutdown --for-good\n"
    "       keepalivectl [--socket PATH] metrics\n"
    "       keepalivectl [--socket PATH] watch [--json] [--since SEQ]\n"
    "\n"
    "  status   peer counts and the daemon's drop counters\n"
    "  peers    every peer and TCP target with its state, address and round-trip time\n"
    "  targets  every TCP target with its connection state and last error\n"
    "  shutdown --for-good\n"
    "           stop keepalived for good (decommissioning): peers are told it is\n"
    "           shutting down (BYE 5) and the saved peer table is deleted\n"
    "  metrics  the Prometheus text exposition of the daemon and every peer\n"
    "  watch    peer events as they happen, in order, until interrupted\n"
    "  -s, --socket PATH  control socket (default /run/keepalived/control.sock)\n"
    "  -j, --json         print JSON instead of a table (watch: one object a line)\n"
    "      --since SEQ    watch: start after event SEQ, from the daemon's recent events\n"
    "  -h, --help         this text\n";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "keepalivectl: %s\n%s", message.c_str(), kUsage);
    return 2;
}

struct Failure {
    std::string message;
};

// One request, one JSON document back, with a deadline so a stuck daemon
// cannot hang the caller.
// A connected control socket (the caller closes it).
int connect_to(const std::string& path) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.size() >= sizeof sa.sun_path) throw Failure{"socket path too long: " + path};
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw Failure{std::string("socket: ") + std::strerror(errno)};
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
        const int error = errno;
        ::close(fd);
        throw Failure{fmt::format("cannot reach keepalived at {}: {}", path, std::strerror(error))};
    }
    return fd;
}

std::string ask(const std::string& path, const std::string& request) {
    const int fd = connect_to(path);
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    const std::string line = request + "\n";
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
        throw Failure{fmt::format("cannot send to {}: {}", path, std::strerror(errno))};
    std::string reply;
    char buf[65536];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, kTimeoutMs);
        if (r == 0) throw Failure{"keepalived did not answer within 5 s"};
        if (r < 0) {
            if (errno == EINTR) continue;
            throw Failure{std::string("poll: ") + std::strerror(errno)};
        }
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            throw Failure{std::string("recv: ") + std::strerror(errno)};
        }
        reply.append(buf, static_cast<std::size_t>(n));
    }
    return reply;
}

std::string format_since(double seconds) {
    if (seconds < 1) return fmt::format("{:.0f}ms", seconds * 1000);
    const auto s = static_cast<long long>(seconds);
    if (s < 60) return fmt::format("{}s", s);
    if (s < 3600) return fmt::format("{}m{}s", s / 60, s % 60);
    if (s < 86400) return fmt::format("{}h{}m", s / 3600, s % 3600 / 60);
    return fmt::format("{}d{}h", s / 86400, s % 86400 / 3600);
}

std::string format_rtt(const nlohmann::json& rtt) {
    if (!rtt.is_number()) return "-";
    const double us = rtt.get<double>();
    return us < 1000 ? fmt::format("{:.0f}us", us) : fmt::format("{:.2f}ms", us / 1000);
}

// A name is data: keep the table on one line per peer whatever it holds.
std::string printable(const std::string& s) {
    std::string out;
    for (const unsigned char c : s) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    return out;
}

// Widths of the NAME and ADDRESS columns: their headers, or the widest row.
std::pair<std::size_t, std::size_t> name_address_widths(const nlohmann::json& rows) {
    std::size_t name_w = 4;
    std::size_t addr_w = 7;
    for (const auto& r : rows) {
        name_w = std::max(name_w, printable(r.at("name").get<std::string>()).size());
        addr_w = std::max(addr_w, r.at("address").get<std::string>().size());
    }
    return {name_w, addr_w};
}

void print_peers(const nlohmann::json& j) {
    const auto& peers = j.at("peers");
    const auto [name_w, addr_w] = name_address_widths(peers);
    fmt::print("{:<{}}  {:<{}}  {:<8}  {:>8}  {:>10}  {:>6}  {:>9}  {:>8}  {}\n", "NAME", name_w,
               "ADDRESS", addr_w, "STATE", "SINCE", "INTERVAL", "MISSED", "RTT", "SESSION",
               "PROTOCOL");
    for (const auto& p : peers) {
        fmt::print("{:<{}}  {:<{}}  {:<8}  {:>8}  {:>10}  {:>6}  {:>9}  {:>8}  {}\n",
                   printable(p.at("name").get<std::string>()), name_w,
                   p.at("address").get<std::string>(), addr_w, p.at("state").get<std::string>(),
                   format_since(p.at("since").get<double>()),
                   fmt::format("{}ms x{}", p.at("interval_ms").get<std::int64_t>(),
                               p.at("probes").get<int>()),
                   p.at("missed").get<std::uint64_t>(), format_rtt(p.at("rtt_us")),
                   p.at("session").get<std::string>(), p.at("protocol").get<std::string>());
    }
    if (peers.empty()) fmt::print("(no peers)\n");
}

std::string or_dash(const nlohmann::json& v) {
    return v.is_string() ? printable(v.get<std::string>()) : "-";
}

void print_targets(const nlohmann::json& j) {
    const auto& targets = j.at("targets");
    const auto [name_w, addr_w] = name_address_widths(targets);
    fmt::print("{:<{}}  {:<{}}  {:<7}  {:>8}  {:<11}  {:>14}  {:>9}  {}\n", "NAME", name_w,
               "ADDRESS", addr_w, "STATE", "SINCE", "CONNECTION", "KEEPALIVE", "RTT", "LAST ERROR");
    for (const auto& t : targets) {
        fmt::print("{:<{}}  {:<{}}  {:<7}  {:>8}  {:<11}  {:>14}  {:>9}  {}\n",
                   printable(t.at("name").get<std::string>()), name_w,
                   t.at("address").get<std::string>(), addr_w, t.at("state").get<std::string>(),
                   format_since(t.at("since").get<double>()), t.at("connection").get<std::string>(),
                   fmt::format("{}s+{}x{}s", t.at("idle_s").get<std::int64_t>(),
                               t.at("probes").get<int>(), t.at("interval_s").get<std::int64_t>()),
                   format_rtt(t.at("rtt_us")), or_dash(t.at("last_error")));
    }
    if (targets.empty()) fmt::print("(no targets)\n");
}

void print_status(const nlohmann::json& j) {
    fmt::print("{}\n", j.at("summary").get<std::string>());
    const auto& d = j.at("daemon");
    fmt::print("daemon:   keepalived {}, up {}, config {}\n", d.at("version").get<std::string>(),
               format_since(d.at("uptime_s").get<double>()), d.at("config").get<std::string>());
    std::string listen;
    for (const auto& a : d.at("listen"))
        listen += (listen.empty() ? "" : ", ") + a.get<std::string>();
    fmt::print("listen:   {}\n", listen);
    // How late the daemon ran its probes (it was stopped, starved or
    // suspended), and the verdicts it withheld for that or for lost datagrams.
    if (d.contains("loop") && d.at("loop").contains("timer_lag_us"))
        fmt::print("loop:     lag {} now, {} at worst; {} verdicts withheld\n",
                   format_rtt(d.at("loop").at("timer_lag_us")),
                   format_rtt(d.at("loop").at("max_timer_lag_us")),
                   d.value("verdicts_withheld", std::uint64_t{0}));
    fmt::print("received: {} datagrams, {} dropped\n",
               j.at("datagrams_received").get<std::uint64_t>(),
               j.at("datagrams_dropped").get<std::uint64_t>());
    for (const auto& [reason, count] : j.at("drops").items())
        if (count.get<std::uint64_t>() > 0)
            fmt::print("  {:<18} {}\n", reason, count.get<std::uint64_t>());
}

// Seconds since the epoch as UTC "2026-01-02T03:04:05.678Z".
std::string format_time(double t) {
    const auto secs = static_cast<std::time_t>(t);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    return fmt::format("{}.{:03d}Z", buf, static_cast<int>((t - static_cast<double>(secs)) * 1000));
}

void print_event(const nlohmann::json& e) {
    if (e.contains("missed")) {
        fmt::print("-- missed {} events (seq {} to {}): this reader fell behind --\n",
                   e.at("missed").get<std::uint64_t>(),
                   e.at("first_missed_seq").get<std::uint64_t>(),
                   e.at("last_missed_seq").get<std::uint64_t>());
        return;
    }
    const std::string previous = e.at("previous_state").get<std::string>();
    fmt::print("{} #{} {} ({}) {}{} [{}]: {}\n", format_time(e.at("time").get<double>()),
               e.at("seq").get<std::uint64_t>(), printable(e.at("name").get<std::string>()),
               e.at("address").get<std::string>(), previous.empty() ? "" : previous + " -> ",
               e.at("state").get<std::string>(), e.at("event").get<std::string>(),
               printable(e.at("reason").get<std::string>()));
}

// Streams events until the daemon closes the connection (or we are interrupted).
int watch(const std::string& path, const std::string& since, bool json) {
    try {
        const int fd = connect_to(path);
        struct Closer {
            int fd;
            ~Closer() { ::close(fd); }
        } closer{fd};
        const std::string line = since.empty() ? "watch\n" : "watch " + since + "\n";
        if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
            throw Failure{fmt::format("cannot send to {}: {}", path, std::strerror(errno))};
        std::string buffer;
        char buf[65536];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n == 0) throw Failure{"keepalived closed the stream"};
            if (n < 0) {
                if (errno == EINTR) continue;
                throw Failure{std::string("recv: ") + std::strerror(errno)};
            }
            buffer.append(buf, static_cast<std::size_t>(n));
            std::size_t start = 0;
            for (auto nl = buffer.find('\n'); nl != std::string::npos;
                 nl = buffer.find('\n', start)) {
                const std::string_view text(buffer.data() + start, nl - start);
                start = nl + 1;
                const auto e = nlohmann::json::parse(text);
                if (e.contains("error"))
                    throw Failure{"keepalived: " + e["error"].get<std::string>()};
                if (json)
                    fmt::print("{}\n", text);
                else
                    print_event(e);
            }
            buffer.erase(0, start);
            if (std::fflush(stdout) != 0) return 1;  // the reader of our output went away
        }
    } catch (const Failure& f) {
        std::fprintf(stderr, "keepalivectl: %s\n", f.message.c_str());
    } catch (const nlohmann::json::exception& e) {
        std::fprintf(stderr, "keepalivectl: unexpected data from keepalived: %s\n", e.what());
    }
    return 1;
}

// One exchange with the daemon: whatever goes wrong is one line on stderr
// and exit status 1.
template <typename Exchange>
int reporting_failures(Exchange&& exchange) {
    try {
        return exchange();
    } catch (const Failure& f) {
        std::fprintf(stderr, "keepalivectl: %s\n", f.message.c_str());
    } catch (const nlohmann::json::exception& e) {
        std::fprintf(stderr, "keepalivectl: unexpected reply from keepalived: %s\n", e.what());
    }
    return 1;
}

// The daemon's JSON answer to `request`; an error answer is a Failure.
nlohmann::json ask_json(const std::string& path, const std::string& request) {
    auto reply = nlohmann::json::parse(ask(path, request));
    if (reply.contains("error")) throw Failure{"keepalived: " + reply["error"].get<std::string>()};
    return reply;
}

}  // namespace

int main(int argc, char** argv) {
    std::string socket_path = kDefaultSocket;
    bool json = false;
    bool for_good = false;
    std::string since;
    static const option options[] = {
        {"for-good", no_argument, nullptr, 'g'},
        {"socket", required_argument, nullptr, 's'},
        {"json", no_argument, nullptr, 'j'},
        {"since", required_argument, nullptr, 'S'},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "s:jh", options, nullptr)) != -1) {
        switch (opt) {
            case 's':
                socket_path = optarg;
                break;
            case 'S':
                since = optarg;
                break;
            case 'j':
                json = true;
                break;
            case 'g':
                for_good = true;
                break;
            case 'h':
                std::fputs(kUsage, stdout);
                return 0;
            default:
                return usage_error(optopt ? std::string("bad option -") + static_cast<char>(optopt)
                                          : std::string("bad option ") + argv[optind - 1]);
        }
    }
    if (optind < argc && std::string_view(argv[optind]) == "shutdown") {
        if (optind + 1 != argc || !for_good)
            return usage_error("shutdown needs --for-good (systemctl stop keeps the sessions)");
        return reporting_failures([&] {
            ask_json(socket_path, "shutdown-for-good");
            fmt::print("keepalived is shutting down for good\n");
            return 0;
        });
    }
    if (optind + 1 != argc)
        return usage_error(
            "expected one command: status, peers, targets, metrics, watch or shutdown");
    const std::string command = argv[optind];
    if (for_good) return usage_error("--for-good goes with shutdown");
    if (command != "status" && command != "peers" && command != "targets" &&
        command != "metrics" && command != "watch")
        return usage_error("unknown command: " + command);
    if (!since.empty() && command != "watch") return usage_error("--since is for watch only");
    if (!since.empty() && since.find_first_not_of("0123456789") != std::string::npos)
        return usage_error("--since needs an event sequence number, not " + since);
    if (command == "watch") return watch(socket_path, since, json);
    if (command == "metrics" && json) return usage_error("metrics has no --json form");

    return reporting_failures([&] {
        if (command == "metrics") {
            // Text, not JSON; only an error reply is a JSON object.
            const std::string text = ask(socket_path, command);
            if (text.empty() || text.front() == '{')
                throw Failure{"keepalived: " + (text.empty()
                                                    ? std::string("empty reply")
                                                    : nlohmann::json::parse(text).value(
                                                          "error", std::string("bad reply")))};
            std::fwrite(text.data(), 1, text.size(), stdout);
            return std::fflush(stdout) == 0 ? 0 : 1;
        }
        auto reply = ask_json(socket_path, command);
        // The daemon streams peers in table order; people read them by name.
        if (command == "peers") {
            auto& peers = reply.at("peers");
            std::sort(peers.begin(), peers.end(), [](const auto& a, const auto& b) {
                return a.at("name").template get<std::string>() <
                       b.at("name").template get<std::string>();
            });
        }
        if (json)
            fmt::print("{}\n", reply.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
        else if (command == "peers")
            print_peers(reply);
        else if (command == "targets")
            print_targets(reply);
        else
            print_status(reply);
        return 0;
    });
}
