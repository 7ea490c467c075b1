// Where the peer table waits while the daemon restarts: the state file (atomic
// write, fsync, rename) for a stop, a reboot or a life without systemd, and two
// memfds kept in systemd's fd store (FDSTORE=1) for a restart or a crash, which
// cost no disk write. Loading picks the newest valid copy and logs every one it
// ignores and why; nothing here is ever fatal.
//
// A periodic save is streamed (begin_save, add, write_piece ..., finish_save):
// the daemon writes a bounded number of peers per loop iteration to the state
// file's temporary copy and to the next memfd, and only the last step makes
// it the saved copy (fsync, rename; the memfd becomes the newer one). Until
// then the previous copies stay whole, so a crash mid-save loses nothing but
// that save. Each record is its peer as of the step that wrote it; a peer that
// enters or leaves the table during the save may be in it or not, and a name
// forgotten and registered again meanwhile may appear twice: the first record
// (the forgotten one, down or left) is the one restored.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
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

    // A save a piece at a time (see above). begin_save() stamps it and
    // writes the header; false if there is nowhere to write (logged). add()
    // encodes one record in memory; write_piece() writes what was added;
    // finish_save() makes it the saved copy, true if at least one copy was
    // written. save() and discard() abandon a save in progress, as does
    // abort_save(); the previous copies are then still the saved ones.
    bool begin_save(std::uint64_t epoch, TimePoint now);
    void add(const PeerRecord& record) { pending_.encoder.add(record, pending_.buffer); }
    void write_piece(TimePoint now);
    // finish_save() writes the end; the file's fsync and rename then run on a
    // helper thread (they wait for the disk, which may take seconds): call
    // poll_save() until it answers (nullopt: not yet).
    void finish_save(TimePoint now);
    std::optional<bool> poll_save(TimePoint now);
    bool finishing() const { return pending_.finishing; }
    void abort_save();
    ~StateStore();
    bool saving() const { return pending_.active; }
    // Records added to the save in progress (or to the last one).
    std::uint32_t records() const { return pending_.encoder.count(); }
    // Bytes written by the save in progress (header included).
    std::uint64_t save_bytes() const { return pending_.offset; }

    bool enabled() const { return !path_.empty() || fd_store_; }
    bool fd_store() const { return fd_store_; }
    const std::string& path() const { return path_; }

private:
    bool write_file(const std::vector<std::uint8_t>& bytes, std::string& error) const;
    bool write_memfd(const std::vector<std::uint8_t>& bytes, std::string& error);
    // memfds_[i], created if need be, emptied.
    bool open_memfd(std::size_t i, std::string& error);
    bool keep_memfd(std::size_t i, std::string& error);

    std::string tmp_path() const { return path_ + ".tmp"; }
    // The temporary copy, created empty (invalid if it cannot be opened; errno says why).
    UniqueFd open_tmp() const;
    // Makes the synced temporary copy the state file.
    bool replace_file(std::string& error) const;

    struct Pending {
        bool active = false;
        SnapshotEncoder encoder;
        std::vector<std::uint8_t> buffer;  // added, not yet written
        std::uint64_t offset = 0;          // bytes written so far
        UniqueFd file;                     // the temporary copy; closed if writing it failed
        bool memfd = false;                // writing memfds_[next_memfd_]
        std::string file_error, memfd_error;
        bool finishing = false;
        bool memfd_saved = false;
        std::thread syncer;  // fsync, rename, fsync of the directory
        std::atomic<bool> synced{false};
        bool file_saved = false;  // written by syncer before `synced`
    };
    // Logs (rate-limited) and clears a save's errors, each copy's.
    void log_failures(std::string& memfd_error, std::string& file_error, TimePoint now);

    std::string path_;
    bool fd_store_;
    Logger& log_;
    std::array<UniqueFd, 2> memfds_;
    std::array<bool, 2> stored_{};  // pushed to (or received from) systemd
    std::size_t next_memfd_ = 0;
    Pending pending_;
};

}  // namespace keepalive
