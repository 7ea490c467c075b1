#include "core/keys_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <optional>
#include <system_error>

#include "core/crypto.hpp"

namespace keepalive {
namespace {

// A keys file holds a handful of lines; the cap keeps a wrong path from being read without end.
constexpr std::size_t kMaxKeysFileSize = 64 * 1024;

bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string shown(std::string_view token) {
    constexpr std::size_t kMax = 24;
    std::string out;
    for (const char ch : token.substr(0, kMax)) {
        const auto c = static_cast<unsigned char>(ch);
        out += (c < 0x20 || c >= 0x7f) ? '?' : ch;
    }
    if (token.size() > kMax) out += "...";
    return "\"" + out + "\"";
}

class LineParser {
public:
    LineParser(std::string_view file, std::uint32_t number, std::string_view line)
        : file_(file), number_(number), line_(line) {}

    // The next whitespace-separated token and its 1-based column; empty at the end or a comment.
    std::pair<std::string_view, std::uint32_t> next() {
        while (pos_ < line_.size() && is_blank(line_[pos_])) ++pos_;
        if (pos_ >= line_.size() || line_[pos_] == '#') return {{}, column()};
        const std::size_t start = pos_;
        while (pos_ < line_.size() && !is_blank(line_[pos_]) && line_[pos_] != '#') ++pos_;
        return {line_.substr(start, pos_ - start), static_cast<std::uint32_t>(start + 1)};
    }
    std::uint32_t column() const { return static_cast<std::uint32_t>(pos_ + 1); }

    Err<KeysFileError> error(std::uint32_t column, std::string message) const {
        return Err{KeysFileError{std::string(file_), number_, column, std::move(message)}};
    }

private:
    std::string_view file_;
    std::uint32_t number_;
    std::string_view line_;
    std::size_t pos_ = 0;
};

std::optional<std::uint32_t> parse_id(std::string_view text) {
    int base = 10;
    if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        text.remove_prefix(2);
        base = 16;
    }
    std::uint32_t id = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id, base);
    if (ec != std::errc{} || end != text.data() + text.size() || text.empty()) return std::nullopt;
    return id;
}

}  // namespace

std::string KeysFileError::to_string() const {
    if (line == 0) return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

Result<kap::KeyRing, KeysFileError> parse_keys(std::string_view text, std::string_view file_name) {
    kap::KeyRing ring;
    std::uint32_t number = 0;
    std::uint32_t last_line = 1;
    while (!text.empty() || number == 0) {
        ++number;
        const std::size_t eol = text.find('\n');
        const std::string_view line = text.substr(0, eol);
        text = eol == std::string_view::npos ? std::string_view{} : text.substr(eol + 1);
        if (!line.empty()) last_line = number;

        LineParser p(file_name, number, line);
        if (line.find('\0') != std::string_view::npos)
            return p.error(static_cast<std::uint32_t>(line.find('\0') + 1),
                           "a NUL byte; a keys file is text");
        const auto [id_text, id_column] = p.next();
        if (id_text.empty()) continue;  // blank or comment
        const auto id = parse_id(id_text);
        if (!id)
            return p.error(id_column, "key id " + shown(id_text) +
                                          " is not a number from 0 to 4294967295 (or 0x0 to "
                                          "0xffffffff); a line is \"ID HEX-KEY\"");
        if (ring.find(*id))
            return p.error(id_column, "key id " + std::to_string(*id) + " is listed twice");

        const auto [hex, hex_column] = p.next();
        if (hex.empty())
            return p.error(hex_column, "key " + std::to_string(*id) +
                                           " has no key; a line is \"ID HEX-KEY\" with at least " +
                                           std::to_string(2 * kap::kMinKeySize) + " hex digits");
        kap::AuthKey key{*id, {}};
        key.secret.reserve(hex.size() / 2);
        for (std::size_t i = 0; i < hex.size(); ++i) {
            if (hex_value(hex[i]) < 0) {
                wipe(key.secret);
                return p.error(static_cast<std::uint32_t>(hex_column + i),
                               "key " + std::to_string(*id) + ": not a hex digit");
            }
        }
        if (hex.size() % 2 != 0)
            return p.error(hex_column, "key " + std::to_string(*id) +
                                           ": an odd number of hex digits (" +
                                           std::to_string(hex.size()) + ")");
        if (hex.size() < 2 * kap::kMinKeySize || hex.size() > 2 * kMaxKeySize)
            return p.error(hex_column, "key " + std::to_string(*id) + ": must be " +
                                           std::to_string(kap::kMinKeySize) + " to " +
                                           std::to_string(kMaxKeySize) + " bytes (" +
                                           std::to_string(2 * kap::kMinKeySize) + " to " +
                                           std::to_string(2 * kMaxKeySize) + " hex digits), not " +
                                           std::to_string(hex.size() / 2));
        for (std::size_t i = 0; i < hex.size(); i += 2)
            key.secret.push_back(
                static_cast<std::uint8_t>(hex_value(hex[i]) << 4 | hex_value(hex[i + 1])));

        const auto [extra, extra_column] = p.next();
        if (!extra.empty()) {
            wipe(key.secret);
            return p.error(extra_column, "unexpected " + shown(extra) +
                                             " after the key; a line is \"ID HEX-KEY\"");
        }
        ring.add(std::move(key));
    }
    if (ring.empty())
        return Err{KeysFileError{std::string(file_name), last_line, 1,
                                 "holds no key; each line is \"ID HEX-KEY\", e.g. \"1 \" and " +
                                     std::to_string(2 * kap::kMinKeySize) +
                                     " hex digits from `openssl rand -hex 32`"}};
    return ring;
}

Result<kap::KeyRing, KeysFileError> load_keys_file(const std::string& path) {
    const auto failure = [&](std::string what) {
        return Err{KeysFileError{path, 0, 0, std::move(what)}};
    };
    const auto system_failure = [&](std::string_view what, int error) {
        return failure(std::string(what) + ": " + std::generic_category().message(error));
    };
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return system_failure("cannot open the keys file", errno);
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};

    struct stat st {};
    if (::fstat(fd, &st) != 0) return system_failure("cannot read the keys file", errno);
    if (!S_ISREG(st.st_mode)) return failure("the keys file is not a regular file");
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        std::array<char, 8> mode{};
        std::to_chars(mode.data(), mode.data() + mode.size(), st.st_mode & 07777, 8);
        return failure(std::string("the keys file is accessible by group or others (mode 0") +
                       mode.data() + "); it holds secrets: chmod 600 it");
    }
    if (static_cast<std::size_t>(st.st_size) > kMaxKeysFileSize)
        return failure("the keys file is larger than 64 KiB");

    std::string text;
    text.reserve(static_cast<std::size_t>(st.st_size));
    std::array<char, 4096> buffer;
    for (;;) {
        const ssize_t n = ::read(fd, buffer.data(), buffer.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            wipe({reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
            return system_failure("cannot read the keys file", errno);
        }
        if (n == 0) break;
        text.append(buffer.data(), static_cast<std::size_t>(n));
        if (text.size() > kMaxKeysFileSize) break;
    }
    wipe({reinterpret_cast<std::uint8_t*>(buffer.data()), buffer.size()});
    if (text.size() > kMaxKeysFileSize) {
        wipe({reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
        return failure("the keys file is larger than 64 KiB");
    }
    auto ring = parse_keys(text, path);
    wipe({reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
    return ring;
}

}  // namespace keepalive
