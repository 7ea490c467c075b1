#include "core/codec.hpp"

#include <algorithm>

#include "core/crypto.hpp"

namespace keepalive::kap {

namespace {

// Datagram size without trailer for each type; REGISTER adds name_len.
constexpr std::size_t kRegisterBaseSize = 50;
constexpr std::size_t kChallengeSize = 36;
constexpr std::size_t kAcceptSize = 36;
constexpr std::size_t kRejectSize = 20;
constexpr std::size_t kProbeSize = 28;
constexpr std::size_t kAckSize = 36;
constexpr std::size_t kByeSize = 20;

// Header field offsets.
constexpr std::size_t kOffType = 3;
constexpr std::size_t kOffFlags = 4;
constexpr std::size_t kOffDiag = 5;
constexpr std::size_t kOffLength = 6;
constexpr std::size_t kOffRegisterNameLen = 33;

// Reads big-endian fields from a span whose size the caller has already checked; each read is
// still bounds-checked so that a wrong size computation fails safe instead of reading past the end.
class Reader {
public:
    explicit Reader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}

    bool ok() const { return ok_; }
    std::size_t pos() const { return pos_; }

    std::uint64_t uint(std::size_t width) {
        if (!take(width)) return 0;
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < width; ++i) v = (v << 8) | bytes_[pos_ - width + i];
        return v;
    }
    std::uint8_t u8() { return static_cast<std::uint8_t>(uint(1)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(uint(4)); }
    std::uint64_t u64() { return uint(8); }
    template <std::size_t N>
    std::array<std::uint8_t, N> bytes() {
        std::array<std::uint8_t, N> out{};
        if (take(N))
            std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(pos_ - N), N, out.begin());
        return out;
    }
    std::string string(std::size_t n) {
        if (!take(n)) return {};
        const auto* p = reinterpret_cast<const char*>(bytes_.data() + pos_ - n);
        return std::string(p, n);
    }
    void skip(std::size_t n) { take(n); }

private:
    bool take(std::size_t n) {
        if (!ok_ || n > bytes_.size() - pos_) {
            ok_ = false;
            return false;
        }
        pos_ += n;
        return true;
    }

    std::span<const std::uint8_t> bytes_;
    std::size_t pos_ = 0;
    bool ok_ = true;
};

class Writer {
public:
    explicit Writer(std::span<std::uint8_t> out) : out_(out) {}

    bool ok() const { return ok_; }
    std::size_t pos() const { return pos_; }

    void uint(std::uint64_t v, std::size_t width) {
        if (!room(width)) return;
        for (std::size_t i = 0; i < width; ++i)
            out_[pos_ + i] = static_cast<std::uint8_t>(v >> (8 * (width - 1 - i)));
        pos_ += width;
    }
    void u8(std::uint8_t v) { uint(v, 1); }
    void u16(std::uint16_t v) { uint(v, 2); }
    void u32(std::uint32_t v) { uint(v, 4); }
    void u64(std::uint64_t v) { uint(v, 8); }
    void bytes(std::span<const std::uint8_t> b) {
        if (!room(b.size())) return;
        std::copy(b.begin(), b.end(), out_.begin() + static_cast<std::ptrdiff_t>(pos_));
        pos_ += b.size();
    }

private:
    bool room(std::size_t n) {
        if (!ok_ || n > out_.size() - pos_) ok_ = false;
        return ok_;
    }

    std::span<std::uint8_t> out_;
    std::size_t pos_ = 0;
    bool ok_ = true;
};

std::span<const std::uint8_t> as_bytes(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Size without trailer, or 0 if unencodable.
std::size_t plain_size(const Body& body) {
    struct Visitor {
        std::size_t operator()(const Register& r) const {
            return r.name.size() > kMaxNameLen ? 0 : kRegisterBaseSize + r.name.size();
        }
        std::size_t operator()(const Challenge&) const { return kChallengeSize; }
        std::size_t operator()(const Accept&) const { return kAcceptSize; }
        std::size_t operator()(const Reject&) const { return kRejectSize; }
        std::size_t operator()(const Probe&) const { return kProbeSize; }
        std::size_t operator()(const Ack&) const { return kAckSize; }
        std::size_t operator()(const Bye&) const { return kByeSize; }
    };
    return std::visit(Visitor{}, body);
}

void write_body(Writer& w, const Body& body) {
    struct Visitor {
        Writer& w;
        void operator()(const Register& r) const {
            w.u64(r.nonce);
            w.u64(r.incarnation);
            w.u32(r.interval_ms);
            w.u8(r.probes);
            w.u8(static_cast<std::uint8_t>(r.name.size()));
            w.bytes(r.cookie);
            w.bytes(as_bytes(r.name));
        }
        void operator()(const Challenge& c) const {
            w.u64(c.nonce);
            w.bytes(c.cookie);
        }
        void operator()(const Accept& a) const {
            w.u64(a.nonce);
            w.u64(a.epoch);
            w.u32(a.interval_ms);
            w.u8(a.probes);
            w.uint(0, 3);
        }
        void operator()(const Reject& r) const { w.u64(r.nonce); }
        void operator()(const Probe& p) const {
            w.u64(p.seq);
            w.u64(p.tx_time);
        }
        void operator()(const Ack& a) const {
            w.u64(a.seq);
            w.u64(a.tx_time);
            w.u64(a.incarnation);
        }
        void operator()(const Bye& b) const { w.u64(b.seq); }
    };
    std::visit(Visitor{w}, body);
}

// `r` is positioned at the start of the body and bounded to the datagram without trailer, whose
// size matches the type (checked by the caller).
Body read_body(Type type, Reader& r) {
    switch (type) {
        case Type::register_: {
            Register m;
            m.nonce = r.u64();
            m.incarnation = r.u64();
            m.interval_ms = r.u32();
            m.probes = r.u8();
            const std::uint8_t name_len = r.u8();
            m.cookie = r.bytes<16>();
            m.name = r.string(name_len);
            return m;
        }
        case Type::challenge: {
            Challenge m;
            m.nonce = r.u64();
            m.cookie = r.bytes<16>();
            return m;
        }
        case Type::accept: {
            Accept m;
            m.nonce = r.u64();
            m.epoch = r.u64();
            m.interval_ms = r.u32();
            m.probes = r.u8();
            r.skip(3);  // padding; the contract does not make nonzero padding a drop reason
            return m;
        }
        case Type::reject:
            return Reject{r.u64()};
        case Type::probe: {
            Probe m;
            m.seq = r.u64();
            m.tx_time = r.u64();
            return m;
        }
        case Type::ack: {
            Ack m;
            m.seq = r.u64();
            m.tx_time = r.u64();
            m.incarnation = r.u64();
            return m;
        }
        case Type::bye:
            return Bye{r.u64()};
    }
    return Bye{};  // unreachable: the type was range-checked by the caller
}

// Expected size without trailer for a datagram whose type byte is valid.
std::size_t expected_plain_size(Type type, std::span<const std::uint8_t> plain) {
    switch (type) {
        case Type::register_:
            if (plain.size() < kRegisterBaseSize) return kRegisterBaseSize;
            return kRegisterBaseSize + plain[kOffRegisterNameLen];
        case Type::challenge:
            return kChallengeSize;
        case Type::accept:
            return kAcceptSize;
        case Type::reject:
            return kRejectSize;
        case Type::probe:
            return kProbeSize;
        case Type::ack:
            return kAckSize;
        case Type::bye:
            return kByeSize;
    }
    return 0;
}

}  // namespace

Type type_of(const Body& body) {
    return static_cast<Type>(body.index() + 1);
}

std::string_view to_string(DecodeError e) {
    switch (e) {
        case DecodeError::too_short:
            return "too_short";
        case DecodeError::bad_magic:
            return "bad_magic";
        case DecodeError::bad_version:
            return "bad_version";
        case DecodeError::bad_length:
            return "bad_length";
        case DecodeError::bad_flags:
            return "bad_flags";
        case DecodeError::bad_type:
            return "bad_type";
        case DecodeError::bad_size:
            return "bad_size";
        case DecodeError::unauthenticated:
            return "unauthenticated";
    }
    return "unknown";
}

std::string_view to_string(Type t) {
    switch (t) {
        case Type::register_:
            return "REGISTER";
        case Type::challenge:
            return "CHALLENGE";
        case Type::accept:
            return "ACCEPT";
        case Type::reject:
            return "REJECT";
        case Type::probe:
            return "PROBE";
        case Type::ack:
            return "ACK";
        case Type::bye:
            return "BYE";
    }
    return "UNKNOWN";
}

std::string_view to_string(Diag d) {
    switch (d) {
        case Diag::none:
            return "none";
        case Diag::detection_expired:
            return "detection time expired";
        case Diag::invalid_parameters:
            return "invalid parameters";
        case Diag::not_permitted:
            return "not permitted";
        case Diag::server_full:
            return "server full";
        case Diag::shutting_down:
            return "shutting down";
        case Diag::removed:
            return "removed by the operator";
        case Diag::unknown_session:
            return "unknown session";
        case Diag::restarting:
            return "restarting";
        case Diag::busy:
            return "busy";
    }
    return "unknown";
}

KeyRing::~KeyRing() {
    for (auto& k : keys_) wipe(k.secret);
}

void KeyRing::add(AuthKey key) {
    if (!active_id_) active_id_ = key.id;
    for (auto& k : keys_) {
        if (k.id == key.id) {
            k = key;
            return;
        }
    }
    keys_.push_back(key);
}

void KeyRing::set_active(std::uint32_t id) {
    active_id_ = id;
}

const AuthKey* KeyRing::find(std::uint32_t id) const {
    for (const auto& k : keys_)
        if (k.id == id) return &k;
    return nullptr;
}

const AuthKey* KeyRing::active() const {
    return active_id_ ? find(*active_id_) : nullptr;
}

Result<Message, DecodeError> decode(std::span<const std::uint8_t> datagram, const KeyRing* keys,
                                    bool require_auth) {
    const std::size_t n = datagram.size();
    if (n < kHeaderSize) return Err{DecodeError::too_short};
    if (datagram[0] != kMagic0 || datagram[1] != kMagic1) return Err{DecodeError::bad_magic};
    if (datagram[2] != kVersion) return Err{DecodeError::bad_version};
    const std::size_t length =
        std::size_t{datagram[kOffLength]} << 8 | std::size_t{datagram[kOffLength + 1]};
    if (length != n) return Err{DecodeError::bad_length};
    const std::uint8_t flags = datagram[kOffFlags];
    if ((flags & ~kFlagAuth) != 0) return Err{DecodeError::bad_flags};
    const std::uint8_t type_byte = datagram[kOffType];
    if (type_byte < 1 || type_byte > 7) return Err{DecodeError::bad_type};
    const auto type = static_cast<Type>(type_byte);

    const bool has_auth = (flags & kFlagAuth) != 0;
    if (has_auth && n < kHeaderSize + kAuthTrailerSize) return Err{DecodeError::bad_size};
    const auto plain = datagram.first(has_auth ? n - kAuthTrailerSize : n);
    if (plain.size() != expected_plain_size(type, plain)) return Err{DecodeError::bad_size};

    if (has_auth) {
        if (keys == nullptr || keys->empty()) return Err{DecodeError::unauthenticated};
        Reader trailer(datagram.subspan(plain.size()));
        const AuthKey* key = keys->find(trailer.u32());
        if (key == nullptr) return Err{DecodeError::unauthenticated};
        const auto covered = datagram.first(n - kAuthMacSize);
        const auto mac = hmac_sha256(key->secret, covered);
        if (!constant_time_equal(mac, datagram.last(kAuthMacSize)))
            return Err{DecodeError::unauthenticated};
    } else if (require_auth) {
        return Err{DecodeError::unauthenticated};
    }

    Reader r(plain);
    r.skip(kOffDiag);  // magic, version, type, flags: checked above
    Message m;
    m.diag = static_cast<Diag>(r.u8());
    r.skip(2);  // length, checked above
    m.session = r.u32();
    m.body = read_body(type, r);
    // The sizes were checked above, so a short read here is a bug, not bad input.
    if (!r.ok() || r.pos() != plain.size()) return Err{DecodeError::bad_size};
    return m;
}

std::optional<std::uint32_t> auth_key_id(std::span<const std::uint8_t> datagram) {
    if (datagram.size() < kHeaderSize + kAuthTrailerSize) return std::nullopt;
    if ((datagram[kOffFlags] & kFlagAuth) == 0) return std::nullopt;
    Reader r(datagram.last(kAuthTrailerSize));
    return r.u32();
}

std::size_t encoded_size(const Message& m, bool with_auth) {
    const std::size_t plain = plain_size(m.body);
    if (plain == 0) return 0;
    return plain + (with_auth ? kAuthTrailerSize : 0);
}

std::size_t encode(const Message& m, std::span<std::uint8_t> out, const AuthKey* key) {
    const std::size_t size = encoded_size(m, key != nullptr);
    if (size == 0 || size > out.size()) return 0;

    Writer w(out.first(size));
    w.u8(kMagic0);
    w.u8(kMagic1);
    w.u8(kVersion);
    w.u8(static_cast<std::uint8_t>(type_of(m.body)));
    w.u8(key != nullptr ? kFlagAuth : 0);
    w.u8(static_cast<std::uint8_t>(m.diag));
    w.u16(static_cast<std::uint16_t>(size));
    w.u32(m.session);
    write_body(w, m.body);
    if (key != nullptr) {
        w.u32(key->id);
        const auto mac = hmac_sha256(key->secret, out.first(w.pos()));
        w.bytes(mac);
    }
    return w.ok() && w.pos() == size ? size : 0;
}

}  // namespace keepalive::kap
