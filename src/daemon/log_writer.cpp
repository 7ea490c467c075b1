#include "daemon/log_writer.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace keepalive {

std::string journal_datagram(const std::vector<std::pair<std::string_view, std::string>>& fields) {
    std::string out;
    for (const auto& [name, value] : fields) {
        out += name;
        if (value.find('\n') == std::string::npos) {
            out += '=';
            out += value;
        } else {
            out += '\n';
            std::uint64_t n = value.size();
            for (int i = 0; i < 8; ++i, n >>= 8) out += static_cast<char>(n & 0xff);
            out += value;
        }
        out += '\n';
    }
    return out;
}

LogWriter::LogWriter(Kind kind, std::string journal_socket)
    : kind_(kind), journal_path_(std::move(journal_socket)) {
    if (kind_ == Kind::journal) {
        connect_journal();
    } else {
        // A stream socket to journald (under systemd) can take a send that
        // does not block; a terminal or a file is written as usual.
        struct stat st {};
        stderr_is_socket_ = fstat(STDERR_FILENO, &st) == 0 && S_ISSOCK(st.st_mode);
    }
}

LogWriter::~LogWriter() {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (pending() && std::chrono::steady_clock::now() < give_up) {
        flush();
        if (pending()) ::poll(nullptr, 0, 10);
    }
}

void LogWriter::connect_journal() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (!fd || journal_path_.size() >= sizeof sa.sun_path) return;
    std::memcpy(sa.sun_path, journal_path_.c_str(), journal_path_.size() + 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return;
    journal_ = std::move(fd);
}

LogWriter::Outcome LogWriter::send(const std::string& record) {
    ssize_t n;
    if (kind_ == Kind::journal) {
        if (!journal_) connect_journal();
        if (!journal_) return Outcome::retry;  // journald not (yet) there
        n = ::send(journal_.get(), record.data(), record.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == ECONNREFUSED || errno == ENOTCONN)) {
            journal_.reset();  // journald restarted: its socket is a new one
            return Outcome::retry;
        }
        if (n < 0 && errno == EMSGSIZE) return Outcome::failed;
    } else if (stderr_is_socket_) {
        n = ::send(STDERR_FILENO, record.data(), record.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
        n = ::write(STDERR_FILENO, record.data(), record.size());
    }
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ENOBUFS
                   ? Outcome::retry
                   : Outcome::failed;
    // A stream took part of a line: the rest goes first next time.
    if (static_cast<std::size_t>(n) < record.size() && kind_ == Kind::stderr_) {
        queue_.front().erase(0, static_cast<std::size_t>(n));
        queued_bytes_ -= std::min(queued_bytes_, static_cast<std::size_t>(n));
        return Outcome::retry;
    }
    return Outcome::sent;
}

void LogWriter::write(std::string record) {
    if (queue_.size() >= kMaxQueued || queued_bytes_ + record.size() > kMaxQueuedBytes) {
        ++dropped_;
        ++dropped_total_;
        return;
    }
    queued_bytes_ += record.size();
    queue_.push_back(std::move(record));
    flush();
}

void LogWriter::flush() {
    while (!queue_.empty()) {
        const std::size_t size = queue_.front().size();
        if (send(queue_.front()) == Outcome::retry) return;
        queued_bytes_ -= std::min(queued_bytes_, size);
        queue_.pop_front();
        if (queue_.empty() && dropped_ > 0) {
            const std::string note =
                fmt::format("{} log records not written: the log was not keeping up", dropped_);
            dropped_ = 0;
            std::string record = kind_ == Kind::journal
                                     ? journal_datagram({{"MESSAGE", note},
                                                         {"PRIORITY", std::to_string(LOG_WARNING)}})
                                     : fmt::format("<{}>{}\n", LOG_WARNING, note);
            queued_bytes_ += record.size();
            queue_.push_back(std::move(record));
        }
    }
}

}  // namespace keepalive
