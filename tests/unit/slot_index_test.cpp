#include "core/slot_index.hpp"

#include <gtest/gtest.h>

#include <random>
#include <unordered_map>
#include <vector>

#include "test_support.hpp"

namespace keepalive {
namespace {

// The keys live outside the index, as the peer table's do: keys[slot].
struct Keyed {
    std::vector<std::uint32_t> keys;
    SlotIndex index;
    std::uint32_t (*hash)(std::uint32_t) = SlotIndex::hash_u32;

    SlotIndex::Slot find(std::uint32_t key) const {
        return index.find(hash(key), [&](SlotIndex::Slot s) { return keys[s] == key; });
    }
    void insert(std::uint32_t key) {
        keys.push_back(key);
        index.insert(hash(key), static_cast<SlotIndex::Slot>(keys.size() - 1));
    }
    bool erase(std::uint32_t key) {
        return index.erase(hash(key), [&](SlotIndex::Slot s) { return keys[s] == key; });
    }
};

std::uint32_t same_hash(std::uint32_t) {
    return 7;
}

TEST(SlotIndex, EmptyFindsNothing) {
    Keyed k;
    EXPECT_EQ(k.find(1), SlotIndex::kNone);
    EXPECT_FALSE(k.erase(1));
}

TEST(SlotIndex, KeysThatAllCollideAreAllFoundAndErasedOneByOne) {
    Keyed k;
    k.hash = same_hash;
    for (std::uint32_t key = 0; key < 100; ++key) k.insert(key * 3);
    for (std::uint32_t key = 0; key < 100; ++key) EXPECT_EQ(k.find(key * 3), key);
    EXPECT_EQ(k.find(1), SlotIndex::kNone);
    // Erase from the middle of the run: the ones after it must still be found.
    for (std::uint32_t key = 0; key < 100; key += 2) EXPECT_TRUE(k.erase(key * 3));
    for (std::uint32_t key = 0; key < 100; ++key)
        EXPECT_EQ(k.find(key * 3), key % 2 == 0 ? SlotIndex::kNone : key) << key;
    EXPECT_EQ(k.index.size(), 50u);
}

TEST(SlotIndex, EraseThenReinsertFindsTheNewSlot) {
    Keyed k;
    k.insert(42);
    EXPECT_TRUE(k.erase(42));
    EXPECT_FALSE(k.erase(42));
    EXPECT_EQ(k.find(42), SlotIndex::kNone);
    k.insert(42);  // slot 1 now
    EXPECT_EQ(k.find(42), 1u);
}

TEST(SlotIndex, GrowsAndKeepsAFifthOfTheCellsFree) {
    Keyed k;
    for (std::uint32_t key = 1; key <= 100'000; ++key) k.insert(key);
    EXPECT_EQ(k.index.size(), 100'000u);
    EXPECT_GE(k.index.capacity(), 125'000u);
    for (std::uint32_t key = 1; key <= 100'000; ++key) ASSERT_EQ(k.find(key), key - 1);
    EXPECT_EQ(k.find(100'001), SlotIndex::kNone);
}

TEST(SlotIndex, RunsThatWrapAroundTheEndStayReachable) {
    // Hashes at the last cells make runs that continue at cell 0; erasing in
    // them must not cut the run.
    Keyed k;
    static std::uint32_t last;
    k.hash = [](std::uint32_t key) { return key < 1000 ? last : key; };
    k.insert(5000);  // capacity 16 now
    last = static_cast<std::uint32_t>(k.index.capacity() - 1);
    for (std::uint32_t key = 0; key < 6; ++key) k.insert(key);
    EXPECT_TRUE(k.erase(0));
    EXPECT_TRUE(k.erase(3));
    for (std::uint32_t key : {1u, 2u, 4u, 5u}) EXPECT_NE(k.find(key), SlotIndex::kNone) << key;
    EXPECT_NE(k.find(5000), SlotIndex::kNone);
}

TEST(SlotIndex, AgreesWithAMapUnderRandomInsertAndErase) {
    std::mt19937_64 random(test_support::test_seed());
    Keyed k;
    // A small hash range makes long runs and many collisions.
    k.hash = [](std::uint32_t key) { return SlotIndex::hash_u32(key) & 0xff; };
    std::unordered_map<std::uint32_t, SlotIndex::Slot> model;
    for (int step = 0; step < 20'000; ++step) {
        const auto key = static_cast<std::uint32_t>(random() % 2000);
        if (random() % 3 != 0) {
            if (model.count(key) == 0) {
                k.insert(key);
                model[key] = static_cast<SlotIndex::Slot>(k.keys.size() - 1);
            }
        } else {
            EXPECT_EQ(k.erase(key), model.erase(key) == 1) << "seed " << test_support::test_seed();
            // The slot's key is gone for good: a later insert uses a new slot.
        }
        if (step % 1000 == 0) {
            for (const auto& [key2, slot] : model) ASSERT_EQ(k.find(key2), slot);
        }
    }
    EXPECT_EQ(k.index.size(), model.size());
    for (std::uint32_t key = 0; key < 2000; ++key)
        EXPECT_EQ(k.find(key), model.count(key) ? model[key] : SlotIndex::kNone);
}

TEST(SlotIndex, NameHashSpreadsNamesThatDifferInOneDigit) {
    std::vector<std::uint32_t> low_bits(256);
    for (int i = 0; i < 25'600; ++i)
        ++low_bits[SlotIndex::hash_bytes("node-" + std::to_string(i)) & 0xff];
    for (const std::uint32_t n : low_bits) EXPECT_GT(n, 30u);  // 100 expected in each
}

}  // namespace
}  // namespace keepalive
