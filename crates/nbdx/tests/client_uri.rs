//! NBD URI parsing and printing (`uri.md`), table-driven.

use std::path::PathBuf;

use nbdx::client::{ClientOptions, Target, TlsMode};
use nbdx::uri::{NbdUri, TlsType};

fn tcp(host: &str, port: u16) -> Target {
    Target::Tcp { host: host.into(), port }
}

fn unix(path: &str) -> Target {
    Target::Unix(PathBuf::from(path))
}

#[test]
fn the_export_name_examples_of_uri_md_parse_to_their_export_names() {
    let table = [
        ("nbd://example.com/disk", "disk"),
        ("nbd+unix:///disk?socket=sock", "disk"),
        ("nbd://example.com/", ""),
        ("nbd://example.com", ""),
        ("nbd://example.com//disk", "/disk"),
        ("nbd://example.com/hello%20world", "hello world"),
    ];
    for (uri, name) in table {
        assert_eq!(NbdUri::parse(uri).unwrap().export_name, name, "{uri}");
    }
}

#[test]
fn schemes_hosts_ports_and_sockets_are_parsed() {
    let table: [(&str, Target, bool); 10] = [
        ("nbd://example.com/disk", tcp("example.com", 10809), false),
        ("nbd://example.com:10810/disk", tcp("example.com", 10810), false),
        ("nbds://example.com/", tcp("example.com", 10809), true),
        ("NBD://h/", tcp("h", 10809), false),
        ("nbd://[::1]:999/x", tcp("::1", 999), false),
        ("nbd://[fe80::1]/x", tcp("fe80::1", 10809), false),
        ("nbd:///x", tcp("localhost", 10809), false),
        ("nbd+unix:///?socket=/tmp/nbd.sock", unix("/tmp/nbd.sock"), false),
        ("nbds+unix:///e?socket=rel%20path", unix("rel path"), true),
        ("nbd+unix:///?socket=%00/abstract", Target::UnixAbstract(b"/abstract".to_vec()), false),
    ];
    for (uri, target, tls) in table {
        let u = NbdUri::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        assert_eq!((&u.target, u.tls), (&target, tls), "{uri}");
    }
}

#[test]
fn tls_parameters_and_user_info_are_parsed() {
    let u = NbdUri::parse(
        "nbds://alice@h/e?tls-certificates=/etc/pki/nbd&tls-hostname=srv.example&tls-verify-peer=0\
         &tls-type=x509&tls-psk-file=/k%2Bey&tls-username=bob",
    )
    .unwrap();
    assert_eq!(u.user.as_deref(), Some("alice"));
    let t = &u.tls_params;
    assert_eq!(t.certificates, Some(PathBuf::from("/etc/pki/nbd")));
    assert_eq!(t.hostname.as_deref(), Some("srv.example"));
    assert_eq!(t.verify_peer, Some(false));
    assert_eq!(t.kind, Some(TlsType::X509));
    assert_eq!(t.psk_file, Some(PathBuf::from("/k+ey")), "'+' is not a space in NBD URIs");
    assert_eq!(t.username.as_deref(), Some("bob"));
    let v = NbdUri::parse("nbds://h/?tls-verification=false").unwrap();
    assert_eq!(v.tls_params.verify_peer, Some(false));
}

#[test]
fn experimental_x_parameters_are_ignored() {
    let u = NbdUri::parse("nbd://h/e?x-whatever=1&x-other").unwrap();
    assert_eq!(u, NbdUri::parse("nbd://h/e").unwrap());
}

#[test]
fn malformed_or_unsupported_uris_are_diagnosed() {
    let table = [
        ("http://example.com/disk", "unknown scheme"),
        ("nbd+vsock://1:10809/", "unsupported"),
        ("nbd:disk", "'//'"),
        ("nbd+unix:///disk", "socket="),
        ("nbd+unix://host/disk?socket=s", "must not name a host"),
        ("nbd://h/disk?socket=s", "only valid with nbd+unix"),
        ("nbd://h/?tls-bogus=1", "unknown query parameter 'tls-bogus'"),
        ("nbd://h/?socks=1", "unknown query parameter"),
        ("nbd://h:0/", "invalid port"),
        ("nbd://h:99999/", "invalid port"),
        ("nbd://h:12a/", "invalid port"),
        ("nbd://[::1/", "unterminated"),
        ("nbd://[nope]/", "not an IPv6 address"),
        ("nbd://::1/", "brackets"),
        ("nbd://h/a b", "must be %-encoded"),
        ("nbd://h/%zz", "two hex digits"),
        ("nbd://h/%ff", "not valid UTF-8"),
        ("nbd://h/a%00b", "contains NUL"),
        ("nbd://h/#frag", "fragments"),
        ("nbd://h/?tls-type=kerberos", "tls-type"),
        ("nbd://h/?tls-verify-peer=maybe", "not 0 or 1"),
        ("nbd://h/?tls-hostname=a&tls-hostname=b", "more than once"),
        ("nbd+unix:///?socket=", "empty"),
    ];
    for (uri, reason) in table {
        match NbdUri::parse(uri) {
            Ok(u) => panic!("{uri} parsed as {u:?}"),
            Err(e) => {
                assert!(e.to_string().contains(reason), "{uri}: '{e}' lacks '{reason}'");
                assert!(e.to_string().starts_with("invalid NBD URI"), "{e}");
            }
        }
    }
}

#[test]
fn display_prints_a_canonical_uri_that_parses_back_to_the_same_value() {
    let table = [
        ("nbd://example.com/disk", "nbd://example.com/disk"),
        ("nbd://example.com:10809//disk", "nbd://example.com//disk"),
        ("NBDS://example.com:1234/hello%20world", "nbds://example.com:1234/hello%20world"),
        ("nbd://[::1]:999/x", "nbd://[::1]:999/x"),
        ("nbd+unix:///disk?socket=/run/a%26b.sock", "nbd+unix:///disk?socket=/run/a%26b.sock"),
        ("nbd+unix:///?socket=%00abs", "nbd+unix:///?socket=%00abs"),
        ("nbd://h/%C3%A9t%C3%A9?x-y=1", "nbd://h/%C3%A9t%C3%A9"),
        (
            "nbds://u@h/e?tls-username=bob&tls-verify-peer=false&tls-type=psk",
            "nbds://u@h/e?tls-type=psk&tls-verify-peer=0&tls-username=bob",
        ),
        ("nbd://h/a%3Fb%23c%25d", "nbd://h/a%3Fb%23c%25d"),
    ];
    for (input, canonical) in table {
        let u = NbdUri::parse(input).unwrap();
        assert_eq!(u.to_string(), canonical, "{input}");
        assert_eq!(NbdUri::parse(canonical).unwrap(), u, "{canonical} does not parse back");
    }
}

#[test]
fn options_from_a_uri_carry_the_export_name_and_the_tls_requirement() {
    let o = ClientOptions::from_uri(&NbdUri::parse("nbds://h/some%20disk").unwrap());
    assert_eq!(o.name(), "some disk");
    assert!(format!("{o:?}").contains(&format!("{:?}", TlsMode::Require)));
    let o = ClientOptions::from_uri(&NbdUri::parse("nbd://h/").unwrap());
    assert!(format!("{o:?}").contains(&format!("{:?}", TlsMode::Disable)));
}
