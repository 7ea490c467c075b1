// Part of the integration harness: two network namespaces joined by a veth
// pair, for tests that need a real link between the daemon and the other side
// (peers or TCP targets) and faults made with nft on it. The namespaces, the
// link and the nft table are created by the constructor and removed by the
// destructor; where they cannot be made (not root, no ip or nft), ok() is
// false and why_not() says why, for GTEST_SKIP().
#pragma once

#include <string>
#include <vector>

#include "net/unique_fd.hpp"

namespace keepalive::test {

class NetnsPair {
public:
    enum class Side { daemon, other };
    struct Layout {
        // Namespace names start with these (then this process's id, so that
        // concurrent runs never collide, and a serial); at most 4 characters.
        std::string daemon_prefix;
        std::string other_prefix;
        std::string daemon_ip;  // e.g. "10.233.0.1", on a /24 with other_ip
        std::string other_ip;
        // The namespace that gets the nft table `table` with chains `in`
        // (hook input) and `out` (hook output), empty, for the tests to fill.
        Side filtered = Side::daemon;
        std::string table;
    };

    explicit NetnsPair(Layout layout);
    ~NetnsPair();
    NetnsPair(const NetnsPair&) = delete;
    NetnsPair& operator=(const NetnsPair&) = delete;

    bool ok() const { return why_not_.empty(); }
    const std::string& why_not() const { return why_not_; }
    const Layout& layout() const { return layout_; }
    const std::string& ns(Side side) const { return side == Side::daemon ? daemon_ns_ : other_ns_; }

    // argv to run `argv` inside a namespace.
    std::vector<std::string> in(Side side, std::vector<std::string> argv) const;
    // One nft command in the filtered namespace; its output. Throws on failure.
    std::string nft(const std::string& command);
    // Empties the table's `in` and `out` chains.
    void clear_rules();
    // A socket made in a namespace (this thread visits it and comes back).
    UniqueFd socket_in(Side side, int type);

private:
    // Namespaces of an earlier run that was killed before it could remove
    // them: named after a process that no longer exists.
    void remove_leftovers();

    Layout layout_;
    std::string ip_;
    std::string nft_;
    std::string daemon_ns_;
    std::string other_ns_;
    bool made_daemon_ = false;
    bool made_other_ = false;
    std::string why_not_;
};

}  // namespace keepalive::test
