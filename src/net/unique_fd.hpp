// UniqueFd: the single owner of a file descriptor.
#pragma once

#include <unistd.h>

#include <utility>

namespace keepalive {

// Move-only owner of a file descriptor; closes it when destroyed or reset.
// -1 means "owns nothing".
class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    ~UniqueFd() { reset(); }

    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;

    int get() const noexcept { return fd_; }
    // Gives up ownership without closing; the caller now owns the descriptor.
    int release() noexcept { return std::exchange(fd_, -1); }
    // Closes the owned descriptor (if any) and takes ownership of `fd`.
    void reset(int fd = -1) noexcept {
        // close() is not retried on EINTR: on Linux the descriptor is gone either way.
        if (fd_ >= 0 && fd_ != fd) ::close(fd_);
        fd_ = fd;
    }
    explicit operator bool() const noexcept { return fd_ >= 0; }

private:
    int fd_ = -1;
};

}  // namespace keepalive
