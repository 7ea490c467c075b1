// The peer table as bytes, so that the daemon's sessions outlive its process:
// written to the state file and to a memfd in systemd's fd store, read back at
// start. Pure: no I/O, no clock; the format is documented in docs/state-file.md.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/peer.hpp"
#include "core/result.hpp"

namespace keepalive {

// One session as saved. Times are ages at the moment of saving, since the
// steady clock of one process means nothing to the next.
struct PeerRecord {
    std::string name;
    Protocol protocol = Protocol::kap1;
    PeerState state = PeerState::up;
    std::uint8_t probes = 0;
    std::uint32_t session = 0;
    std::uint64_t incarnation = 0;
    Address address;       // where probes go
    Address listener;      // the bound address of the socket probes leave by
    Address route_local;   // the local address probes leave from
    Duration interval{};   // as granted
    Duration state_age{};  // how long it had been in `state`
    std::uint64_t seq_sent = 0;
    std::uint64_t seq_acked = 0;
    std::uint64_t probes_sent = 0;
    std::uint64_t acks_received = 0;
    std::optional<Duration> rtt;

    friend bool operator==(const PeerRecord&, const PeerRecord&) = default;
};

struct ServerSnapshot {
    static constexpr std::uint32_t kVersion = 1;

    std::uint64_t epoch = 0;
    // When it was saved: wall clock and CLOCK_BOOTTIME in ns, and the boot it
    // was saved in (/proc/sys/kernel/random/boot_id), so that the reader can
    // tell how old it is even if the wall clock stepped.
    std::int64_t saved_realtime_ns = 0;
    std::int64_t saved_boottime_ns = 0;
    std::array<std::uint8_t, 16> boot_id{};
    std::vector<PeerRecord> peers;

    friend bool operator==(const ServerSnapshot&, const ServerSnapshot&) = default;
};

std::vector<std::uint8_t> encode_snapshot(const ServerSnapshot& snapshot);
// Checks the magic, version, length and checksum, and every record's fields;
// the error says what was wrong ("truncated", "checksum mismatch", ...).
Result<ServerSnapshot, std::string> decode_snapshot(std::span<const std::uint8_t> bytes);

}  // namespace keepalive
