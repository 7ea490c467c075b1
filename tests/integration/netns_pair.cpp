#include "netns_pair.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "harness.hpp"

namespace keepalive::test {
namespace {

using Strings = std::vector<std::string>;

// The path of a system tool (the harness runs programs by path); empty if none.
std::string tool(const std::string& name) {
    for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"})
        if (::access((dir + name).c_str(), X_OK) == 0) return dir + name;
    return "";
}

RunResult must(const Strings& argv) {
    RunResult r = run(argv);
    if (!r.status.exited_with(0)) {
        std::string line;
        for (const auto& a : argv) line += a + " ";
        throw std::runtime_error(line + "failed (" + r.status.to_string() + "): " + r.err);
    }
    return r;
}

}  // namespace

NetnsPair::NetnsPair(Layout layout) : layout_(std::move(layout)) {
    static int serial = 0;
    const std::string id = std::to_string(::getpid()) + "x" + std::to_string(++serial);
    daemon_ns_ = layout_.daemon_prefix + id;
    other_ns_ = layout_.other_prefix + id;
    // Interface names: at most 15 bytes, and unique as the namespaces are.
    const std::string daemon_link = "v" + daemon_ns_;
    const std::string other_link = "v" + other_ns_;
    ip_ = tool("ip");
    nft_ = tool("nft");
    if (ip_.empty() || nft_.empty()) {
        why_not_ = "needs ip (iproute2) and nft (nftables)";
        return;
    }
    remove_leftovers();
    const RunResult r = run({ip_, "netns", "add", daemon_ns_});
    if (!r.status.exited_with(0)) {
        why_not_ = "cannot create a network namespace: " + r.err;
        return;
    }
    made_daemon_ = true;
    must({ip_, "netns", "add", other_ns_});
    made_other_ = true;
    must({ip_, "link", "add", daemon_link, "netns", daemon_ns_, "type", "veth", "peer", "name",
          other_link, "netns", other_ns_});
    for (const auto& [ns, link, address] : {std::tuple{daemon_ns_, daemon_link, layout_.daemon_ip},
                                            std::tuple{other_ns_, other_link, layout_.other_ip}}) {
        must({ip_, "-n", ns, "link", "set", "lo", "up"});
        must({ip_, "-n", ns, "addr", "add", address + "/24", "dev", link});
        must({ip_, "-n", ns, "link", "set", link, "up"});
    }
    const std::string& t = layout_.table;
    nft("add table ip " + t);
    nft("add chain ip " + t + " in { type filter hook input priority 0; }");
    nft("add chain ip " + t + " out { type filter hook output priority 0; }");
}

NetnsPair::~NetnsPair() {
    // Deleting a namespace deletes its end of the veth pair, the other end
    // with it, and its nft tables.
    if (made_daemon_) run({ip_, "netns", "del", daemon_ns_});
    if (made_other_) run({ip_, "netns", "del", other_ns_});
}

Strings NetnsPair::in(Side side, Strings argv) const {
    Strings out{ip_, "netns", "exec", ns(side)};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
}

std::string NetnsPair::nft(const std::string& command) {
    return must(in(layout_.filtered, {nft_, command})).out;
}

void NetnsPair::clear_rules() {
    nft("flush chain ip " + layout_.table + " in");
    nft("flush chain ip " + layout_.table + " out");
}

UniqueFd NetnsPair::socket_in(Side side, int type) {
    UniqueFd here(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    UniqueFd there(::open(("/run/netns/" + ns(side)).c_str(), O_RDONLY | O_CLOEXEC));
    if (!here || !there || ::setns(there.get(), CLONE_NEWNET) != 0)
        throw std::runtime_error("cannot enter namespace " + ns(side) + ": " +
                                 std::strerror(errno));
    UniqueFd fd(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
    if (::setns(here.get(), CLONE_NEWNET) != 0) std::abort();  // would poison every test
    return fd;
}

void NetnsPair::remove_leftovers() {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
        const std::string name = entry.path().filename().string();
        for (const std::string& prefix : {layout_.daemon_prefix, layout_.other_prefix}) {
            if (!name.starts_with(prefix)) continue;
            const pid_t pid = std::atoi(name.c_str() + prefix.size());
            if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) run({ip_, "netns", "del", name});
        }
    }
}

}  // namespace keepalive::test
