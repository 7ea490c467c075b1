// A cache hint that survives the optimiser.
#pragma once

namespace keepalive {

// Asks for the cache line at `p` ahead of a read; never faults, changes nothing.
// The empty asm keeps GCC 12 from deleting the prefetch: at -O2 it drops a
// __builtin_prefetch under a branch (e.g. "if the table is not empty") in
// inlined member functions, silently.
inline void prefetch_read(const void* p) {
    asm volatile("");
    __builtin_prefetch(p);
}

}  // namespace keepalive
