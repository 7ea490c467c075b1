// LogWriter against a real datagram socket that stops reading, as a stopped
// journald does: writing never blocks, the queue is bounded and counted, and
// once the reader is back everything queued arrives, then one record saying
// how many were lost.
#include "daemon/log_writer.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace keepalive {
namespace {

class FakeJournal {
public:
    FakeJournal() {
        char tmpl[] = "/tmp/ka-journal-XXXXXX";
        dir_ = ::mkdtemp(tmpl);
        path_ = dir_ + "/socket";
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strcpy(sa.sun_path, path_.c_str());
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    }
    ~FakeJournal() {
        ::close(fd_);
        ::unlink(path_.c_str());
        ::rmdir(dir_.c_str());
    }
    const std::string& path() const { return path_; }
    // Everything queued on the socket now.
    std::vector<std::string> drain() const {
        std::vector<std::string> out;
        char buf[65536];
        for (;;) {
            const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
            if (n < 0) return out;
            out.emplace_back(buf, static_cast<std::size_t>(n));
        }
    }

private:
    std::string dir_;
    std::string path_;
    int fd_ = -1;
};

std::string entry(int i) {
    return journal_datagram({{"MESSAGE", "line " + std::to_string(i)}});
}

TEST(JournalDatagram, PlainAndBinaryFields) {
    EXPECT_EQ(journal_datagram({{"MESSAGE", "hello"}, {"PRIORITY", "6"}}),
              "MESSAGE=hello\nPRIORITY=6\n");
    const std::string two_lines = journal_datagram({{"MESSAGE", "a\nb"}});
    EXPECT_EQ(two_lines, std::string("MESSAGE\n\x03\0\0\0\0\0\0\0a\nb\n", 8 + 8 + 4));
}

TEST(LogWriter, AStoppedReaderNeverBlocksAndLossIsCountedAndReported) {
    FakeJournal journal;
    LogWriter writer(LogWriter::Kind::journal, journal.path());
    const std::size_t total = LogWriter::kMaxQueued + 500;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < total; ++i) writer.write(entry(static_cast<int>(i)));
    // Generous: a blocking send would wait forever on a reader that never reads.
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
    EXPECT_TRUE(writer.pending());
    EXPECT_GT(writer.dropped_total(), 0u);

    std::vector<std::string> got;
    for (int round = 0; round < 100'000 && (writer.pending() || got.empty()); ++round) {
        auto batch = journal.drain();
        got.insert(got.end(), batch.begin(), batch.end());
        writer.flush();
    }
    auto rest = journal.drain();
    got.insert(got.end(), rest.begin(), rest.end());
    ASSERT_FALSE(writer.pending());
    // In order, none duplicated, the loss reported last.
    ASSERT_EQ(got.size(), total - writer.dropped_total() + 1);
    for (std::size_t i = 0; i + 1 < got.size(); ++i) ASSERT_EQ(got[i], entry(static_cast<int>(i)));
    EXPECT_NE(got.back().find(std::to_string(writer.dropped_total()) + " log records not written"),
              std::string::npos)
        << got.back();
}

TEST(LogWriter, NoJournaldYetMeansQueuedNotLost) {
    char tmpl[] = "/tmp/ka-nojournal-XXXXXX";
    const std::string dir = ::mkdtemp(tmpl);
    LogWriter writer(LogWriter::Kind::journal, dir + "/socket");
    writer.write(entry(1));
    EXPECT_TRUE(writer.pending());
    EXPECT_EQ(writer.dropped_total(), 0u);
    ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace keepalive
