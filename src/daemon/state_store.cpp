#include "daemon/state_store.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <system_error>

#include "core/clock.hpp"

namespace keepalive {
namespace {

// A state file is ~130 bytes a peer; this bounds a wrong path (a device, a log).
constexpr std::size_t kMaxStateSize = std::size_t{2} << 30;

std::int64_t clock_ns(clockid_t id) {
    return read_clock(id).count();
}

std::array<std::uint8_t, 16> read_boot_id() {
    std::array<std::uint8_t, 16> id{};
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string text;
    if (!std::getline(in, text)) return id;
    std::size_t n = 0;
    for (std::size_t i = 0; i + 1 < text.size() && n < id.size();) {
        if (text[i] == '-') {
            ++i;
            continue;
        }
        const auto hex = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            return -1;
        };
        const int hi = hex(text[i]);
        const int lo = hex(text[i + 1]);
        if (hi < 0 || lo < 0) return {};
        id[n++] = static_cast<std::uint8_t>(hi * 16 + lo);
        i += 2;
    }
    return n == id.size() ? id : std::array<std::uint8_t, 16>{};
}

std::string errno_text(int e) {
    return std::strerror(e);
}

bool write_all(int fd, std::span<const std::uint8_t> bytes, off_t offset) {
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n =
            pwrite(fd, bytes.data() + done, bytes.size() - done, offset + static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}

// The whole content of fd from offset 0, or an error.
Result<std::vector<std::uint8_t>, std::string> read_all(int fd) {
    struct stat st {};
    if (fstat(fd, &st) != 0) return Err{errno_text(errno)};
    if (!S_ISREG(st.st_mode)) return Err{std::string("not a regular file")};
    if (static_cast<std::uint64_t>(st.st_size) > kMaxStateSize)
        return Err{std::string("larger than 2 GiB")};
    std::vector<std::uint8_t> out(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Err{errno_text(errno)};
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    out.resize(done);
    return out;
}

}  // namespace

SaveStamp save_stamp_now() {
    return {clock_ns(CLOCK_REALTIME), clock_ns(CLOCK_BOOTTIME), read_boot_id()};
}

namespace {

// Marks the snapshot as saved now (its age on load is counted from here).
void stamp_now(ServerSnapshot& snapshot) {
    const SaveStamp stamp = save_stamp_now();
    snapshot.saved_realtime_ns = stamp.realtime_ns;
    snapshot.saved_boottime_ns = stamp.boottime_ns;
    snapshot.boot_id = stamp.boot_id;
}

}  // namespace

Duration age_of(const ServerSnapshot& s, const SaveStamp& now) {
    constexpr std::array<std::uint8_t, 16> unknown{};
    const bool same_boot = s.boot_id != unknown && s.boot_id == now.boot_id;
    const std::int64_t ns =
        same_boot ? now.boottime_ns - s.saved_boottime_ns : now.realtime_ns - s.saved_realtime_ns;
    return Duration(std::max<std::int64_t>(ns, 0));
}

StateStore::StateStore(std::string path, bool use_fd_store, Logger& log)
    : path_(std::move(path)), fd_store_(use_fd_store), log_(log) {}

void StateStore::adopt_memfd(std::string_view name, UniqueFd fd) {
    for (std::size_t i = 0; i < memfds_.size(); ++i) {
        if (name == kMemfdNames[i]) {
            memfds_[i] = std::move(fd);
            stored_[i] = true;
            return;
        }
    }
}

std::optional<LoadedState> StateStore::load() {
    const SaveStamp now = save_stamp_now();
    std::optional<LoadedState> best;
    std::optional<std::size_t> best_memfd;
    const auto consider = [&](Result<std::vector<std::uint8_t>, std::string> bytes,
                              const std::string& source, std::optional<std::size_t> memfd) {
        if (!bytes) {
            log_.logf(LOG_WARNING, "ignoring saved state in {}: {}", source, bytes.error());
            return;
        }
        auto snapshot = decode_snapshot(*bytes);
        if (!snapshot) {
            log_.logf(LOG_WARNING, "ignoring saved state in {}: {}", source, snapshot.error());
            return;
        }
        const Duration age = age_of(*snapshot, now);
        // The newest wins; on a tie, the fd store (it is written first).
        if (!best || age < best->age) {
            best = LoadedState{std::move(*snapshot), age, source};
            best_memfd = memfd;
        }
    };
    for (std::size_t i = 0; i < memfds_.size(); ++i)
        if (memfds_[i]) consider(read_all(memfds_[i].get()), "fd store", i);
    if (!path_.empty()) {
        const UniqueFd fd(open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
        if (fd)
            consider(read_all(fd.get()), path_, std::nullopt);
        else if (errno != ENOENT)
            log_.logf(LOG_WARNING, "ignoring saved state in {}: {}", path_, errno_text(errno));
    }
    // Overwrite the older memfd first, so the newest copy survives a torn write.
    if (best_memfd) next_memfd_ = 1 - *best_memfd;
    return best;
}

bool StateStore::save(ServerSnapshot snapshot, TimePoint now) {
    abort_save();
    stamp_now(snapshot);
    const auto bytes = encode_snapshot(snapshot);
    std::string memfd_error, file_error;
    bool saved = false;
    if (fd_store_ && write_memfd(bytes, memfd_error)) saved = true;
    if (!path_.empty() && write_file(bytes, file_error)) saved = true;
    log_failures(memfd_error, file_error, now);
    return saved;
}

bool StateStore::write_memfd(const std::vector<std::uint8_t>& bytes, std::string& error) {
    const std::size_t i = next_memfd_;
    if (!open_memfd(i, error)) return false;
    if (!write_all(memfds_[i].get(), bytes, 0)) {
        error = "write: " + errno_text(errno);
        return false;
    }
    return keep_memfd(i, error);
}

// Hands memfds_[i], now holding the newest copy, to systemd if it does not
// have it yet; the next save overwrites the other one.
bool StateStore::keep_memfd(std::size_t i, std::string& error) {
    if (!stored_[i]) {
        const std::string message = std::string("FDSTORE=1\nFDNAME=") + kMemfdNames[i];
        int fds[1] = {memfds_[i].get()};
        if (sd_pid_notify_with_fds(0, 0, message.c_str(), fds, 1) <= 0) {
            error = "FDSTORE=1 was not accepted";
            return false;
        }
        stored_[i] = true;
    }
    next_memfd_ = 1 - i;
    return true;
}

bool StateStore::open_memfd(std::size_t i, std::string& error) {
    if (!memfds_[i]) {
        memfds_[i] = UniqueFd(memfd_create(kMemfdNames[i], MFD_CLOEXEC));
        if (!memfds_[i]) {
            error = "memfd_create: " + errno_text(errno);
            return false;
        }
    }
    // Shrink first: a crash before the copy is whole leaves a short one that
    // fails its checksum, and the other memfd still holds the previous snapshot.
    if (ftruncate(memfds_[i].get(), 0) != 0) {
        error = "ftruncate: " + errno_text(errno);
        return false;
    }
    return true;
}

bool StateStore::write_file(const std::vector<std::uint8_t>& bytes, std::string& error) const {
    const std::string tmp = tmp_path();
    const UniqueFd fd = open_tmp();
    if (!fd) {
        error = "open " + tmp + ": " + errno_text(errno);
        return false;
    }
    if (!write_all(fd.get(), bytes, 0) || fsync(fd.get()) != 0) {
        error = "write " + tmp + ": " + errno_text(errno);
        unlink(tmp.c_str());
        return false;
    }
    return replace_file(error);
}

UniqueFd StateStore::open_tmp() const {
    return UniqueFd(
        open(tmp_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
}

bool StateStore::replace_file(std::string& error) const {
    const std::string tmp = tmp_path();
    if (rename(tmp.c_str(), path_.c_str()) != 0) {
        error = "rename: " + errno_text(errno);
        unlink(tmp.c_str());
        return false;
    }
    // The rename itself is durable only once the directory is synced.
    const auto slash = path_.rfind('/');
    const std::string dir = slash == std::string::npos ? "."
                            : slash == 0               ? "/"
                                                       : path_.substr(0, slash);
    if (const UniqueFd d(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); d) fsync(d.get());
    return true;
}

void StateStore::discard() {
    abort_save();
    if (!path_.empty() && unlink(path_.c_str()) != 0 && errno != ENOENT)
        log_.logf(LOG_WARNING, "cannot remove the state file {}: {}", path_, errno_text(errno));
    for (std::size_t i = 0; i < memfds_.size(); ++i) {
        if (stored_[i]) {
            const std::string message = std::string("FDSTOREREMOVE=1\nFDNAME=") + kMemfdNames[i];
            sd_notify(0, message.c_str());
            stored_[i] = false;
        }
        memfds_[i].reset();
    }
}

bool StateStore::begin_save(std::uint64_t epoch, TimePoint now) {
    abort_save();
    Pending& p = pending_;
    p.file_error.clear();
    p.memfd_error.clear();
    if (!path_.empty()) {
        p.file = open_tmp();
        if (!p.file) p.file_error = "open " + tmp_path() + ": " + errno_text(errno);
    }
    p.memfd = fd_store_ && open_memfd(next_memfd_, p.memfd_error);
    if (!p.file && !p.memfd) {
        log_failures(p.memfd_error, p.file_error, now);
        return false;
    }
    ServerSnapshot header;
    header.epoch = epoch;
    stamp_now(header);
    p.buffer.clear();
    p.offset = 0;
    p.encoder.begin(header, p.buffer);
    p.active = true;
    return true;
}

void StateStore::write_piece(TimePoint now) {
    Pending& p = pending_;
    if (!p.active || p.buffer.empty()) return;
    const auto offset = static_cast<off_t>(p.offset);
    if (p.memfd && !write_all(memfds_[next_memfd_].get(), p.buffer, offset)) {
        p.memfd_error = "write: " + errno_text(errno);
        p.memfd = false;
    }
    if (p.file) {
        const int fd = p.file.get();
        if (!write_all(fd, p.buffer, offset)) {
            p.file_error = "write " + tmp_path() + ": " + errno_text(errno);
            p.file.reset();
            unlink(tmp_path().c_str());
        } else {
            // Start this piece's writeback now, so that the fsync at the end
            // has less left to wait for. Only a hint: fsync does what it did not.
            sync_file_range(fd, offset, static_cast<off_t>(p.buffer.size()), SYNC_FILE_RANGE_WRITE);
        }
    }
    p.offset += p.buffer.size();
    p.buffer.clear();
    if (!p.file && !p.memfd) {
        log_failures(p.memfd_error, p.file_error, now);
        abort_save();
    }
}

void StateStore::finish_save(TimePoint now) {
    Pending& p = pending_;
    if (!p.active) return;
    p.encoder.finish(p.buffer);
    write_piece(now);
    if (!p.active) return;  // every copy failed (logged)
    p.finishing = true;
    p.memfd_saved = p.memfd && keep_memfd(next_memfd_, p.memfd_error);
    p.file_saved = false;
    p.synced = false;
    if (!p.file) {
        p.synced = true;
        return;
    }
    // Off the loop: an fsync waits for the disk, seconds on a busy one.
    const auto sync = [this] {
        Pending& q = pending_;
        const int synced = fsync(q.file.get()) == 0 ? 0 : errno;
        q.file.reset();
        if (synced != 0) {
            q.file_error = "write " + tmp_path() + ": " + errno_text(synced);
            unlink(tmp_path().c_str());
        } else {
            q.file_saved = replace_file(q.file_error);
        }
        q.synced.store(true, std::memory_order_release);
    };
    try {
        p.syncer = std::thread(sync);
    } catch (const std::system_error&) {
        sync();  // no thread to be had: on the loop, as before
    }
}

std::optional<bool> StateStore::poll_save(TimePoint now) {
    Pending& p = pending_;
    if (!p.finishing) return false;
    if (!p.synced.load(std::memory_order_acquire)) return std::nullopt;
    if (p.syncer.joinable()) p.syncer.join();
    log_failures(p.memfd_error, p.file_error, now);
    p.finishing = false;
    p.active = false;
    p.buffer.clear();
    return p.memfd_saved || p.file_saved;
}

StateStore::~StateStore() {
    if (pending_.syncer.joinable()) pending_.syncer.join();
}

void StateStore::abort_save() {
    Pending& p = pending_;
    if (p.syncer.joinable()) p.syncer.join();  // at a stop: the rename may as well finish
    p.finishing = false;
    if (!p.active) return;
    if (p.file) {
        p.file.reset();
        unlink(tmp_path().c_str());
    }
    // A memfd written in part fails its checksum; the other holds the previous copy.
    p.memfd = false;
    p.active = false;
    p.buffer.clear();
}

void StateStore::log_failures(std::string& memfd_error, std::string& file_error, TimePoint now) {
    if (!memfd_error.empty())
        log_.log_limited("state-memfd", LOG_WARNING,
                         "cannot keep the peer table in the fd store: " + memfd_error, now);
    if (!file_error.empty())
        log_.log_limited("state-file", LOG_WARNING,
                         "cannot write the state file " + path_ + ": " + file_error, now);
    memfd_error.clear();
    file_error.clear();
}

}  // namespace keepalive
