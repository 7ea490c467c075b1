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
#include "core/crypto.hpp"
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
    // 1: written whole (the count before the records); 2: written a piece at
    // a time by SnapshotEncoder (the count after them). Both are read.
    static constexpr std::uint32_t kVersion = 1;
    static constexpr std::uint32_t kStreamedVersion = 2;

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
// `peer`'s record, its time in state as of `as_of` (zero if it changed
// since), into `out`, reusing out's storage for the name.
void to_record(const Peer& peer, TimePoint as_of, const Address& listener, PeerRecord& out);

// Encodes a snapshot one record at a time (format version 2), so that a large
// table can be saved over many loop iterations: the record count and the
// checksum come at the end, once every record has gone by. Each call appends
// its bytes to `out`; what they append, in order, is one snapshot.
class SnapshotEncoder {
public:
    // The header: `header`'s epoch and save stamps (its peers are ignored).
    void begin(const ServerSnapshot& header, std::vector<std::uint8_t>& out);
    void add(const PeerRecord& record, std::vector<std::uint8_t>& out);
    // The count and the checksum; then begin() may start another.
    void finish(std::vector<std::uint8_t>& out);
    std::uint32_t count() const { return count_; }

private:
    Sha256 hash_;
    std::uint32_t count_ = 0;
};

// Reads versions 1 and 2. Checks the magic, version, length and checksum, and every record's
// fields; the error says what was wrong ("truncated", "checksum mismatch", ...).
Result<ServerSnapshot, std::string> decode_snapshot(std::span<const std::uint8_t> bytes);

}  // namespace keepalive
