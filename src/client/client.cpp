#include "keepalive/client.hpp"

#include <fmt/format.h>
#include <netdb.h>

#include <stdexcept>
#include <system_error>

#include "core/keys_file.hpp"
#include "core/peer.hpp"
#include "core/peer_session.hpp"
#include "net/udp_socket.hpp"

namespace keepalive {
namespace {

Address resolve(const std::string& text, std::uint16_t default_port, const char* what) {
    if (auto a = Address::parse(text)) return *a;
    if (auto a = Address::parse_host(text, default_port)) return *a;
    // A host name, with or without a port.
    std::string host = text;
    std::string port = std::to_string(default_port);
    if (const auto colon = text.rfind(':'); colon != std::string::npos && text.find(':') == colon) {
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (host.empty() || getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 ||
        res == nullptr)
        throw std::invalid_argument(std::string("cannot resolve ") + what + " '" + text + "'");
    auto a = Address::from_sockaddr(res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (!a) throw std::invalid_argument(std::string("unusable ") + what + " '" + text + "'");
    return *a;
}

// Fails closed: a keys file that was named but cannot be used is an error, never "no auth".
std::optional<kap::KeyRing> load_keys(const std::string& path) {
    if (path.empty()) return std::nullopt;
    auto keys = load_keys_file(path);
    if (!keys) throw std::invalid_argument(keys.error().to_string());
    return std::move(*keys);
}

std::string_view diag_text(kap::Diag d) {
    return kap::to_string(d);
}

}  // namespace

struct Client::Impl final : PeerSessionSink {
    Impl(ClientOptions o, Handler h)
        : options(std::move(o)),
          handler(std::move(h)),
          server(resolve(options.server, kap::kDefaultPort, "server")),
          socket(open_socket()),
          session(
              PeerSessionOptions{options.name, static_cast<std::uint32_t>(options.interval.count()),
                                 static_cast<std::uint8_t>(options.probes),
                                 load_keys(options.keys_file)},
              random, *this) {}

    UdpSocket open_socket() {
        Address local =
            server.family() == Address::Family::v4 ? Address::v4(0, 0) : *Address::parse("[::]:0");
        if (!options.bind.empty()) local = resolve(options.bind, 0, "bind address");
        if (local.family() != server.family())
            throw std::invalid_argument("bind address and server are of different families");
        auto s = UdpSocket::bind(local);
        if (!s) throw std::system_error(errno, std::generic_category(), s.error());
        return std::move(*s);
    }

    void send(std::span<const std::uint8_t> datagram) override { socket.send_to(server, datagram); }

    void session_event(const SessionEvent& e) override {
        if (!handler) return;
        ClientNotice n{ClientEvent::registered, static_cast<int>(e.diag), {}};
        switch (e.kind) {
            case SessionEventKind::registered:
                n.event = ClientEvent::registered;
                n.message = fmt::format(
                    "registered with {} as {}: session {:08x}, interval {} ms, {} probes",
                    server.to_string(), options.name, session.session(),
                    session.granted_interval_ms(), session.granted_probes());
                break;
            case SessionEventKind::server_restarted:
                n.event = ClientEvent::server_restarted;
                n.message = fmt::format("server {} restarted (new epoch {:016x})",
                                        server.to_string(), session.epoch());
                break;
            case SessionEventKind::rejected:
                n.event = ClientEvent::rejected;
                // Busy (diag 9) is not an error: the session backs off and tries again.
                n.message = e.diag == kap::Diag::busy
                                ? fmt::format("server {} is busy: registering again later",
                                              server.to_string())
                                : fmt::format("server {} rejected the registration: {}",
                                              server.to_string(), diag_text(e.diag));
                break;
            case SessionEventKind::lost:
                n.event = ClientEvent::lost;
                n.message = fmt::format("server {} lost: no probe for too long, registering again",
                                        server.to_string());
                break;
            case SessionEventKind::goodbye:
                n.event = ClientEvent::goodbye;
                n.message = fmt::format(
                    "server {} said goodbye: {}{}", server.to_string(), diag_text(e.diag),
                    e.diag == kap::Diag::restarting
                        ? fmt::format("; keeping session {:08x} through the restart",
                                      session.session())
                        : std::string("; registering again"));
                break;
        }
        handler(n);
    }

    ClientOptions options;
    Handler handler;
    Address server;
    UdpSocket socket;
    SystemRandom random;
    PeerSession session;
};

Client::Client(ClientOptions options, Handler on_event) {
    if (!valid_peer_name(options.name))
        throw std::invalid_argument("name must be 1 to 64 of A-Z a-z 0-9 . _ - : @");
    if (options.interval.count() < 1 || options.interval.count() > kap::kMaxIntervalMs)
        throw std::invalid_argument("interval must be from 1 ms to 1 h");
    if (options.probes < 1 || options.probes > 255)
        throw std::invalid_argument("probes must be from 1 to 255");
    impl_ = std::make_unique<Impl>(std::move(options), std::move(on_event));
}

Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

void Client::start() {
    impl_->session.start(Clock::now());
}
int Client::fd() const {
    return impl_->socket.fd();
}
std::optional<Client::Clock::time_point> Client::next_deadline() const {
    return impl_->session.next_deadline();
}

void Client::on_readable() {
    const auto now = Clock::now();
    impl_->socket.receive_batch([&](const UdpSocket::Received& r) {
        // Only the server may talk to us; anything else is ignored unread.
        if (r.from != impl_->server || r.truncated) return;
        impl_->session.on_datagram(r.data, now);
    });
}

void Client::on_timeout() {
    impl_->session.on_timer(Clock::now());
}
void Client::stop() {
    impl_->session.stop();
}
void Client::reload_keys() {
    impl_->session.set_keys(load_keys(impl_->options.keys_file));
}
bool Client::registered() const {
    return impl_->session.state() == SessionState::registered;
}
std::uint32_t Client::session() const {
    return impl_->session.session();
}
std::chrono::milliseconds Client::granted_interval() const {
    return std::chrono::milliseconds(impl_->session.granted_interval_ms());
}
unsigned Client::granted_probes() const {
    return impl_->session.granted_probes();
}
std::string Client::server_address() const {
    return impl_->server.to_string();
}
std::string Client::local_address() const {
    return impl_->socket.local().to_string();
}

}  // namespace keepalive
