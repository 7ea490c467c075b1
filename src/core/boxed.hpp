// Boxed<T>: an owning pointer to a part most owners never need, so that it
// costs them 8 bytes instead of sizeof(T) (the peer table holds one record
// per peer: flap history, loss window and last error share one box, PeerRare).
// Empty until make(); copies deep-copy, so the owner stays copyable.
#pragma once

#include <memory>

namespace keepalive {

template <typename T>
class Boxed {
public:
    Boxed() = default;
    Boxed(const Boxed& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
    Boxed& operator=(const Boxed& o) {
        if (this != &o) p_ = o.p_ ? std::make_unique<T>(*o.p_) : nullptr;
        return *this;
    }
    Boxed(Boxed&&) noexcept = default;
    Boxed& operator=(Boxed&&) noexcept = default;

    explicit operator bool() const { return p_ != nullptr; }
    const T* get() const { return p_.get(); }
    T* get() { return p_.get(); }
    const T* operator->() const { return p_.get(); }
    T* operator->() { return p_.get(); }
    // The boxed value, made (value-initialised) if there is none.
    T& make() {
        if (!p_) p_ = std::make_unique<T>();
        return *p_;
    }
    void reset() { p_.reset(); }

private:
    std::unique_ptr<T> p_;
};

}  // namespace keepalive
