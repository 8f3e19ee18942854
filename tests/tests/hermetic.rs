//! `make test` runs every cluster inside a network namespace with loopback
//! only (hack/test.sh): a dial to anything but a local address must fail at
//! once with "network unreachable", never leave the machine. Ignored in a plain
//! `cargo test` (a developer's shell has a route); run by `make test`.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Addresses a test cluster here could stray to: the QEMU guest's, CNI's, the
/// real node's Pod and node IPs, the Service range, and a public address.
const STRAYS: &[&str] = &[
    "10.0.2.15:10250",
    "10.88.0.5:8080",
    "10.245.0.2:8081",
    "192.168.77.2:10250",
    "10.0.0.1:443",
    "1.1.1.1:443",
];

#[test]
#[ignore = "asserts make test's network namespace (hack/test.sh): run by make test"]
fn non_local_addresses_are_unreachable_and_loopback_works() {
    for addr in STRAYS {
        let addr: SocketAddr = addr.parse().expect("a literal address");
        let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect_err("a dial to a non-local address succeeded: not hermetic");
        assert_eq!(
            err.kind(),
            ErrorKind::NetworkUnreachable,
            "dialling {addr}: {err} (a route exists, or the dial timed out in flight)"
        );
    }
    // Loopback still works.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding on loopback");
    let local = listener.local_addr().expect("its address");
    TcpStream::connect_timeout(&local, Duration::from_secs(2)).expect("dialling loopback");
}
