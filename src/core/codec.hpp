// KAP/1 wire codec: datagram bytes <-> Message, exactly as the KAP/1 contract
// (restated in docs/protocol.md). Pure: no I/O, no logging, no clock. decode()
// checks the framing rules the contract lists as drop reasons and nothing else;
// semantic checks (name characters, interval and probe ranges, session ids,
// seq rules) are the caller's, because the contract answers some of them with
// REJECT rather than a silent drop.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/result.hpp"

namespace keepalive::kap {

inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::size_t kAuthTrailerSize = 36;  // key_id u32 + HMAC-SHA256
inline constexpr std::size_t kAuthMacSize = 32;
inline constexpr std::size_t kMaxNameLen = 64;
// Largest datagram this implementation sends.
inline constexpr std::size_t kMaxDatagramSize = 50 + kMaxNameLen + kAuthTrailerSize;  // 150
// Largest datagram decode() can accept: a REGISTER whose name_len is 255 with a
// trailer. Such a REGISTER decodes (the server must answer it with REJECT diag 2),
// so a receive buffer needs at least this many bytes; use a larger one and treat
// MSG_TRUNC as a drop.
inline constexpr std::size_t kMaxDecodableSize = 50 + 255 + kAuthTrailerSize;  // 341
inline constexpr std::uint16_t kDefaultPort = 7371;
inline constexpr std::uint32_t kMaxIntervalMs = 3'600'000;
inline constexpr std::uint8_t kMagic0 = 0x4B;  // 'K'
inline constexpr std::uint8_t kMagic1 = 0x41;  // 'A'
inline constexpr std::uint8_t kVersion = 1;
inline constexpr std::uint8_t kFlagAuth = 0x01;

enum class Type : std::uint8_t {
    register_ = 1,
    challenge = 2,
    accept = 3,
    reject = 4,
    probe = 5,
    ack = 6,
    bye = 7
};

// Values outside the enumerators can occur after decode(): the contract does not
// make an unknown diag a drop reason, so the byte is carried through unchanged.
enum class Diag : std::uint8_t {
    none = 0,
    detection_expired = 1,
    invalid_parameters = 2,
    not_permitted = 3,
    server_full = 4,
    shutting_down = 5,
    removed = 6,
    unknown_session = 7,
    restarting = 8,  // BYE from a server that will be back with every session
    busy = 9,        // REJECT: over capacity now, register again later (backing off)
};

using Cookie = std::array<std::uint8_t, 16>;

// name = raw bytes as received; NOT validated by decode (may be empty or up to
// 255 bytes). encode() refuses names longer than kMaxNameLen.
struct Register {
    std::uint64_t nonce = 0;
    std::uint64_t incarnation = 0;
    std::uint32_t interval_ms = 0;
    std::uint8_t probes = 0;
    Cookie cookie{};
    std::string name;
    friend bool operator==(const Register&, const Register&) = default;
};
struct Challenge {
    std::uint64_t nonce = 0;
    Cookie cookie{};
    friend bool operator==(const Challenge&, const Challenge&) = default;
};
// The 3 padding bytes are written as zero and ignored on decode.
struct Accept {
    std::uint64_t nonce = 0;
    std::uint64_t epoch = 0;
    std::uint32_t interval_ms = 0;
    std::uint8_t probes = 0;
    friend bool operator==(const Accept&, const Accept&) = default;
};
struct Reject {
    std::uint64_t nonce = 0;
    friend bool operator==(const Reject&, const Reject&) = default;
};
struct Probe {
    std::uint64_t seq = 0;
    std::uint64_t tx_time = 0;
    friend bool operator==(const Probe&, const Probe&) = default;
};
struct Ack {
    std::uint64_t seq = 0;
    std::uint64_t tx_time = 0;
    std::uint64_t incarnation = 0;
    friend bool operator==(const Ack&, const Ack&) = default;
};
struct Bye {
    std::uint64_t seq = 0;
    friend bool operator==(const Bye&, const Bye&) = default;
};

// Alternative index + 1 == wire type.
using Body = std::variant<Register, Challenge, Accept, Reject, Probe, Ack, Bye>;

struct Message {
    Diag diag = Diag::none;
    std::uint32_t session = 0;
    Body body;
    friend bool operator==(const Message&, const Message&) = default;
};

Type type_of(const Body&);
inline Type type_of(const Message& m) {
    return type_of(m.body);
}

// Why a datagram was dropped; used as counter names too (to_string gives snake_case).
enum class DecodeError : std::uint8_t {
    too_short,        // fewer bytes than the 12-byte header
    bad_magic,        // not "KA"
    bad_version,      // version != 1
    bad_length,       // header length != bytes received
    bad_flags,        // a flag bit other than AUTH set
    bad_type,         // type not 1..7
    bad_size,         // body size wrong for the type, or AUTH set without room for the trailer
    unauthenticated,  // trailer missing where required, unknown key_id, or MAC mismatch
};
inline constexpr std::size_t kDecodeErrorCount = 8;

std::string_view to_string(DecodeError);  // "too_short", "bad_magic", ...
std::string_view to_string(Type);         // "REGISTER", ...; "UNKNOWN" otherwise
std::string_view to_string(Diag);         // short human text; "unknown" otherwise

inline constexpr std::size_t kMinKeySize = 32;  // bytes; shorter keys are refused when loaded

struct AuthKey {
    std::uint32_t id = 0;
    std::vector<std::uint8_t> secret;  // any length; kMinKeySize or more from a keys file
};

// The keys a node holds. A receiver accepts any of them; a sender uses the active
// one. The first key added is active until set_active() picks another.
class KeyRing {
public:
    KeyRing() = default;
    KeyRing(const KeyRing&) = default;
    KeyRing& operator=(const KeyRing&) = default;
    KeyRing(KeyRing&&) noexcept = default;
    KeyRing& operator=(KeyRing&&) noexcept = default;
    ~KeyRing();  // wipes the secrets

    // Adds a key, replacing one with the same id.
    void add(AuthKey key);
    // Selects the key used for sending; active() is nullptr while no key has that id.
    void set_active(std::uint32_t id);
    const AuthKey* find(std::uint32_t id) const;
    const AuthKey* active() const;
    bool empty() const { return keys_.empty(); }
    std::size_t size() const { return keys_.size(); }

private:
    std::vector<AuthKey> keys_;
    std::optional<std::uint32_t> active_id_;
};

// Decodes one datagram. With the AUTH flag set the trailer is verified against `keys`; with no
// keys (nullptr or empty) such a datagram is rejected as unauthenticated. If `require_auth` is
// true, a datagram without AUTH is rejected as unauthenticated too. Framing is checked before
// the trailer, in the order of the DecodeError enumerators, so the first failing rule is reported.
Result<Message, DecodeError> decode(std::span<const std::uint8_t> datagram,
                                    const KeyRing* keys = nullptr, bool require_auth = false);

// The key_id of a datagram whose header has AUTH set and that is long enough to hold a
// trailer; nullopt otherwise. Nothing is verified.
std::optional<std::uint32_t> auth_key_id(std::span<const std::uint8_t> datagram);

// Bytes encode() would write, or 0 if the message is unencodable.
std::size_t encoded_size(const Message&, bool with_auth = false);

// The session field of a datagram's header, read without decoding or checking
// anything else (0 if it is too short): a hint for prefetching, never a verdict.
inline std::uint32_t peek_session(std::span<const std::uint8_t> datagram) {
    if (datagram.size() < kHeaderSize) return 0;
    const auto* h = datagram.data() + kHeaderSize - 4;
    return std::uint32_t{h[0]} << 24 | std::uint32_t{h[1]} << 16 | std::uint32_t{h[2]} << 8 |
           std::uint32_t{h[3]};
}

// Writes the datagram into `out`, returns its length, or 0 if `out` is too small or the message is
// unencodable (e.g. name longer than 64). With `key`, sets AUTH and appends the trailer. Fields are
// written as given (session, diag), without checking that the type uses them.
std::size_t encode(const Message&, std::span<std::uint8_t> out, const AuthKey* key = nullptr);

}  // namespace keepalive::kap
