// Where the peer table waits while the daemon restarts: the state file (atomic
// write, fsync, rename) for a stop, a reboot or a life without systemd, and two
// memfds kept in systemd's fd store (FDSTORE=1) for a restart or a crash, which
// cost no disk write. Loading picks the newest valid copy and logs every one it
// ignores and why; nothing here is ever fatal.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/peer_snapshot.hpp"
#include "daemon/log.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {

// The clocks a snapshot is stamped with, read now.
struct SaveStamp {
    std::int64_t realtime_ns = 0;
    std::int64_t boottime_ns = 0;
    std::array<std::uint8_t, 16> boot_id{};  // all zero when unknown
};
SaveStamp save_stamp_now();
// How long ago `s` was saved, as of `now`: CLOCK_BOOTTIME within one boot
// (immune to wall-clock steps), the wall clock across a reboot; never negative.
Duration age_of(const ServerSnapshot& s, const SaveStamp& now);

struct LoadedState {
    ServerSnapshot snapshot;
    Duration age{};
    std::string source;  // "fd store" or the file's path
};

class StateStore {
public:
    // fd-store names of the two memfds.
    static constexpr const char* kMemfdNames[2] = {"state-a", "state-b"};

    // `path` empty: no state file. `use_fd_store`: keep memfds in systemd's fd
    // store (only meaningful with $NOTIFY_SOCKET).
    StateStore(std::string path, bool use_fd_store, Logger& log);

    // A memfd handed back by systemd under one of kMemfdNames.
    void adopt_memfd(std::string_view name, UniqueFd fd);

    // The newest valid saved state, if any.
    std::optional<LoadedState> load();

    // Writes the snapshot to the next memfd and to the state file. Failures
    // are logged (rate-limited) and leave the old copies. True if at least one
    // copy was written.
    bool save(ServerSnapshot snapshot, TimePoint now);

    // Removes every saved copy (a shutdown for good).
    void discard();

    bool enabled() const { return !path_.empty() || fd_store_; }
    bool fd_store() const { return fd_store_; }
    const std::string& path() const { return path_; }

private:
    bool write_file(const std::vector<std::uint8_t>& bytes, std::string& error) const;
    bool write_memfd(const std::vector<std::uint8_t>& bytes, std::string& error);

    std::string path_;
    bool fd_store_;
    Logger& log_;
    std::array<UniqueFd, 2> memfds_;
    std::array<bool, 2> stored_{};  // pushed to (or received from) systemd
    std::size_t next_memfd_ = 0;
};

}  // namespace keepalive
