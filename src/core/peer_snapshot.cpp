#include "core/peer_snapshot.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "core/codec.hpp"
#include "core/crypto.hpp"

namespace keepalive {
namespace {

constexpr std::array<std::uint8_t, 8> kMagic = {'K', 'A', 'P', 'S', 'T', 'A', 'T', 'E'};
// magic, version, realtime, boottime, boot id, epoch, count
constexpr std::size_t kHeaderSize = 8 + 4 + 8 + 8 + 16 + 8 + 4;
constexpr std::size_t kChecksumSize = 32;
constexpr std::size_t kAddressSize = 1 + 16 + 2 + 4;  // family, bytes, port, scope
// name_len, protocol, state, probes, session, incarnation, 3 addresses,
// interval, age, seq_sent, seq_acked, probes_sent, acks_received, rtt
constexpr std::size_t kRecordFixedSize = 1 + 1 + 1 + 1 + 4 + 8 + 3 * kAddressSize + 8 * 7;
constexpr std::uint64_t kNoRtt = UINT64_MAX;
constexpr Duration kMaxInterval = milliseconds(kap::kMaxIntervalMs);

// Appends to a buffer the caller owns.
class Writer {
public:
    explicit Writer(std::vector<std::uint8_t>& out) : out_(out) {}
    void u8(std::uint8_t v) { out_.push_back(v); }
    void u16(std::uint16_t v) { be(v, 2); }
    void u32(std::uint32_t v) { be(v, 4); }
    void u64(std::uint64_t v) { be(v, 8); }
    void bytes(std::span<const std::uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
    void address(const Address& a) {
        u8(a.family() == Address::Family::v4 ? 4 : 6);
        bytes(a.bytes());
        u16(a.port());
        u32(a.scope_id());
    }

private:
    void be(std::uint64_t v, int n) {
        for (int i = n - 1; i >= 0; --i) out_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    }
    std::vector<std::uint8_t>& out_;
};

// Reads within bounds checked by the caller (every record's fixed part is
// checked for room before it is read).
class Reader {
public:
    explicit Reader(std::span<const std::uint8_t> in) : in_(in) {}
    std::size_t left() const { return in_.size() - pos_; }
    std::uint8_t u8() { return in_[pos_++]; }
    std::uint16_t u16() { return static_cast<std::uint16_t>(be(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(be(4)); }
    std::uint64_t u64() { return be(8); }
    std::span<const std::uint8_t> bytes(std::size_t n) {
        auto s = in_.subspan(pos_, n);
        pos_ += n;
        return s;
    }
    std::optional<Address> address() {
        const std::uint8_t family = u8();
        const auto raw = bytes(16);
        const std::uint16_t port = u16();
        const std::uint32_t scope = u32();
        sockaddr_storage ss{};
        if (family == 4) {
            auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
            sin->sin_family = AF_INET;
            sin->sin_port = htons(port);
            std::memcpy(&sin->sin_addr, raw.data(), 4);
            return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_in));
        }
        if (family == 6) {
            auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons(port);
            sin6->sin6_scope_id = scope;
            std::memcpy(&sin6->sin6_addr, raw.data(), 16);
            return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_in6));
        }
        return std::nullopt;
    }

private:
    std::uint64_t be(int n) {
        std::uint64_t v = 0;
        for (int i = 0; i < n; ++i) v = (v << 8) | in_[pos_++];
        return v;
    }
    std::span<const std::uint8_t> in_;
    std::size_t pos_ = 0;
};

std::uint64_t to_ns(Duration d) {
    return static_cast<std::uint64_t>(std::max(d, Duration::zero()).count());
}

Duration from_ns(std::uint64_t ns) {
    return Duration(static_cast<Duration::rep>(std::min<std::uint64_t>(ns, INT64_MAX)));
}

void write_header(Writer& w, const ServerSnapshot& s, std::uint32_t version) {
    w.bytes(kMagic);
    w.u32(version);
    w.u64(static_cast<std::uint64_t>(s.saved_realtime_ns));
    w.u64(static_cast<std::uint64_t>(s.saved_boottime_ns));
    w.bytes(s.boot_id);
    w.u64(s.epoch);
}

void write_record(Writer& w, const PeerRecord& p) {
    w.u8(static_cast<std::uint8_t>(p.name.size()));
    w.u8(static_cast<std::uint8_t>(p.protocol));
    w.u8(static_cast<std::uint8_t>(p.state));
    w.u8(p.probes);
    w.u32(p.session);
    w.u64(p.incarnation);
    w.address(p.address);
    w.address(p.listener);
    w.address(p.route_local);
    w.u64(to_ns(p.interval));
    w.u64(to_ns(p.state_age));
    w.u64(p.seq_sent);
    w.u64(p.seq_acked);
    w.u64(p.probes_sent);
    w.u64(p.acks_received);
    w.u64(p.rtt ? to_ns(*p.rtt) : kNoRtt);
    w.bytes(std::span(reinterpret_cast<const std::uint8_t*>(p.name.data()), p.name.size()));
}

}  // namespace

void to_record(const Peer& p, TimePoint as_of, const Address& listener, PeerRecord& out) {
    out.name.assign(p.name.view());
    out.protocol = p.protocol;
    out.state = p.state;
    out.probes = p.probes;
    out.session = p.session;
    out.incarnation = p.incarnation;
    out.address = p.address;
    out.listener = listener;
    out.route_local = p.route->local;
    out.interval = p.interval;
    out.state_age = std::max(as_of - p.since, Duration::zero());
    out.seq_sent = p.seq_sent;
    out.seq_acked = p.seq_acked;
    out.probes_sent = p.probes_sent;
    out.acks_received = p.acks_received;
    out.rtt = p.rtt;
}

std::vector<std::uint8_t> encode_snapshot(const ServerSnapshot& s) {
    std::vector<std::uint8_t> out;
    Writer w(out);
    write_header(w, s, ServerSnapshot::kVersion);
    w.u32(static_cast<std::uint32_t>(s.peers.size()));
    for (const PeerRecord& p : s.peers) write_record(w, p);
    w.bytes(sha256(out));
    return out;
}

void SnapshotEncoder::begin(const ServerSnapshot& header, std::vector<std::uint8_t>& out) {
    hash_ = Sha256();
    count_ = 0;
    const std::size_t from = out.size();
    Writer w(out);
    write_header(w, header, ServerSnapshot::kStreamedVersion);
    hash_.update(std::span(out).subspan(from));
}

void SnapshotEncoder::add(const PeerRecord& record, std::vector<std::uint8_t>& out) {
    const std::size_t from = out.size();
    Writer w(out);
    write_record(w, record);
    hash_.update(std::span(out).subspan(from));
    ++count_;
}

void SnapshotEncoder::finish(std::vector<std::uint8_t>& out) {
    const std::size_t from = out.size();
    Writer w(out);
    w.u32(count_);
    hash_.update(std::span(out).subspan(from));
    w.bytes(hash_.finish());
}

Result<ServerSnapshot, std::string> decode_snapshot(std::span<const std::uint8_t> bytes) {
    using E = Err<std::string>;
    if (bytes.size() < kMagic.size() + 4 ||
        !std::equal(kMagic.begin(), kMagic.end(), bytes.begin()))
        return E{bytes.size() < kMagic.size() ? "truncated (no header)" : "not a state file"};
    Reader r(bytes);
    r.bytes(kMagic.size());
    const std::uint32_t version = r.u32();
    if (version != ServerSnapshot::kVersion && version != ServerSnapshot::kStreamedVersion)
        return E{"format version " + std::to_string(version) + ", this keepalived reads " +
                 std::to_string(ServerSnapshot::kVersion) + " and " +
                 std::to_string(ServerSnapshot::kStreamedVersion)};
    // Both versions hold the same fields: version 2 has its record count
    // after the records instead of before.
    if (bytes.size() < kHeaderSize + kChecksumSize) return E{"truncated (no header)"};
    const auto body = bytes.first(bytes.size() - kChecksumSize);
    const Sha256Digest digest = sha256(body);
    if (!constant_time_equal(digest, bytes.last(kChecksumSize)))
        return E{"checksum mismatch (truncated or corrupt)"};

    ServerSnapshot s;
    const bool streamed = version == ServerSnapshot::kStreamedVersion;
    Reader b(streamed ? body.first(body.size() - 4) : body);
    b.bytes(kMagic.size() + 4);
    s.saved_realtime_ns = static_cast<std::int64_t>(b.u64());
    s.saved_boottime_ns = static_cast<std::int64_t>(b.u64());
    const auto boot = b.bytes(16);
    std::copy(boot.begin(), boot.end(), s.boot_id.begin());
    s.epoch = b.u64();
    const std::uint32_t count = streamed ? Reader(body.last(4)).u32() : b.u32();
    if (count > b.left() / kRecordFixedSize) return E{"peer count larger than the file"};
    s.peers.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        const std::string where = "record " + std::to_string(i + 1) + ": ";
        if (b.left() < kRecordFixedSize) return E{where + "truncated"};
        PeerRecord p;
        const std::uint8_t name_len = b.u8();
        const std::uint8_t protocol = b.u8();
        const std::uint8_t state = b.u8();
        p.probes = b.u8();
        p.session = b.u32();
        p.incarnation = b.u64();
        const auto address = b.address();
        const auto listener = b.address();
        const auto route_local = b.address();
        p.interval = from_ns(b.u64());
        p.state_age = from_ns(b.u64());
        p.seq_sent = b.u64();
        p.seq_acked = b.u64();
        p.probes_sent = b.u64();
        p.acks_received = b.u64();
        if (const std::uint64_t rtt = b.u64(); rtt != kNoRtt) p.rtt = from_ns(rtt);
        if (b.left() < name_len) return E{where + "truncated"};
        const auto name = b.bytes(name_len);
        p.name.assign(name.begin(), name.end());

        if (!valid_peer_name(p.name)) return E{where + "invalid peer name"};
        if (protocol > static_cast<std::uint8_t>(Protocol::legacy))
            return E{where + "unknown protocol " + std::to_string(protocol)};
        if (state >= kPeerStateCount) return E{where + "unknown state " + std::to_string(state)};
        if (!address || !listener || !route_local) return E{where + "bad address family"};
        if (p.probes == 0 || p.interval < milliseconds(1) || p.interval > kMaxInterval)
            return E{where + "interval or probes out of range"};
        if (p.session == 0 || p.seq_acked > p.seq_sent)
            return E{where + "session or seq out of range"};
        p.protocol = static_cast<Protocol>(protocol);
        p.state = static_cast<PeerState>(state);
        p.address = *address;
        p.listener = *listener;
        p.route_local = *route_local;
        s.peers.push_back(std::move(p));
    }
    if (b.left() != 0) return E{"trailing bytes after the last record"};
    return s;
}

}  // namespace keepalive
