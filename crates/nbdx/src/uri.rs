//! NBD URIs, as `uri.md` of the NBD project defines them.
//!
//! ```text
//! nbd://[user@]host[:port]/export?tls-...      TCP (port 10809 by default)
//! nbds://...                                    TCP, TLS required
//! nbd+unix:///export?socket=PATH                Unix socket (%00... = abstract)
//! nbds+unix:///export?socket=PATH               Unix socket, TLS required
//! ```
//!
//! The export name is the path without its leading `/`, %-decoded
//! (`nbd://h//disk` names `/disk`). The URI is split into its RFC 3986
//! components here and every component is decoded with `percent-encoding`;
//! no normalization (dot segments, `+` as space) touches the export name.
//! Unknown query parameters are errors ("SHOULD be diagnosed"); `x-`
//! parameters are ignored. [`NbdUri`]'s `Display` prints the canonical form,
//! which parses back to the same value.

use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv6Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::client::Target;
use nbdx_proto::consts::DEFAULT_PORT;

/// Characters escaped in the export name (the path): everything but
/// RFC 3986 `pchar` and `/`.
const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?');
const PATH_SET: &AsciiSet = &PATH.add(b'[').add(b']').add(b'\\').add(b'^').add(b'`').add(b'{').add(b'|').add(b'}');
/// Characters escaped in query values and user names.
const COMPONENT: &AsciiSet = &PATH_SET.add(b'&').add(b'=').add(b'+').add(b'@').add(b';');

/// A malformed or unsupported NBD URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NBD URI '{uri}': {reason}")]
pub struct UriError {
    uri: String,
    reason: String,
}

impl UriError {
    fn new(uri: &str, reason: impl Into<String>) -> Self {
        Self { uri: uri.to_owned(), reason: reason.into() }
    }

    /// Why the URI was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// `tls-type`: the TLS authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsType {
    /// `anon`: anonymous (no authentication).
    Anon,
    /// `x509`: certificates.
    X509,
    /// `psk`: pre-shared keys.
    Psk,
}

impl TlsType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Anon => "anon",
            Self::X509 => "x509",
            Self::Psk => "psk",
        }
    }
}

/// TLS query parameters. Parsed now; used once the client speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsParams {
    /// `tls-type`.
    pub kind: Option<TlsType>,
    /// `tls-hostname`: name to verify the certificate against.
    pub hostname: Option<String>,
    /// `tls-verify-peer` (alias `tls-verification`): `0`/`false` disables verification.
    pub verify_peer: Option<bool>,
    /// `tls-certificates`: directory of certificates.
    pub certificates: Option<PathBuf>,
    /// `tls-psk-file`: pre-shared keys file.
    pub psk_file: Option<PathBuf>,
    /// `tls-username`: user name for PSK.
    pub username: Option<String>,
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub target: Target,
    /// Whether TLS is required (`nbds`, `nbds+unix`).
    pub tls: bool,
    /// The `userinfo` of the authority, for TLS authentication.
    pub user: Option<String>,
    /// The export name.
    pub export_name: String,
    /// TLS parameters.
    pub tls_params: TlsParams,
}

impl NbdUri {
    /// Parses `s`.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        let err = |reason: String| UriError::new(s, reason);
        check_chars(s).map_err(err)?;
        let (scheme, rest) = s.split_once(':').ok_or_else(|| err("missing scheme".into()))?;
        let (tls, unix) = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            "nbd+vsock" | "nbds+vsock" => return Err(err(format!("scheme '{scheme}' (vsock) is unsupported"))),
            _ => return Err(err(format!("unknown scheme '{scheme}' (expected nbd, nbds, nbd+unix or nbds+unix)"))),
        };
        let rest = rest.strip_prefix("//").ok_or_else(|| err("expected '//' after the scheme".into()))?;
        if rest.contains('#') {
            return Err(err("fragments ('#') are not allowed".into()));
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let export_name = decode_utf8(path.strip_prefix('/').unwrap_or(path), "export name").map_err(err)?;
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(decode_utf8(u, "user name").map_err(err)?), h),
            None => (None, authority),
        };
        let q = Query::parse(query).map_err(err)?;
        let target = if unix {
            if !hostport.is_empty() && hostport != "localhost" {
                return Err(err("a Unix socket URI must not name a host".into()));
            }
            let socket = q.socket.ok_or_else(|| err("missing 'socket=' parameter (required for +unix)".into()))?;
            match socket.strip_prefix(b"\0") {
                Some(name) if !name.is_empty() => Target::UnixAbstract(name.to_vec()),
                Some(_) => return Err(err("empty abstract socket name".into())),
                None if socket.is_empty() => return Err(err("empty 'socket=' parameter".into())),
                None => Target::Unix(PathBuf::from(OsStr::from_bytes(&socket))),
            }
        } else {
            if q.socket.is_some() {
                return Err(err("'socket=' is only valid with nbd+unix:// or nbds+unix://".into()));
            }
            let (host, port) = parse_host_port(hostport).map_err(err)?;
            Target::Tcp { host, port }
        };
        Ok(Self { target, tls, user, export_name, tls_params: q.tls })
    }

    /// The scheme of this URI.
    pub fn scheme(&self) -> &'static str {
        match (self.tls, matches!(self.target, Target::Tcp { .. })) {
            (false, true) => "nbd",
            (true, true) => "nbds",
            (false, false) => "nbd+unix",
            (true, false) => "nbds+unix",
        }
    }
}

impl FromStr for NbdUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        Self::parse(s)
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme())?;
        if let Some(u) = &self.user {
            write!(f, "{}@", utf8_percent_encode(u, COMPONENT))?;
        }
        if let Target::Tcp { host, port } = &self.target {
            match host.contains(':') {
                true => write!(f, "[{host}]")?,
                false => write!(f, "{}", utf8_percent_encode(host, COMPONENT))?,
            }
            if *port != DEFAULT_PORT {
                write!(f, ":{port}")?;
            }
        }
        write!(f, "/{}", utf8_percent_encode(&self.export_name, PATH_SET))?;
        let mut params: Vec<(&str, String)> = Vec::new();
        match &self.target {
            Target::Unix(p) => params.push(("socket", encode_bytes(p.as_os_str().as_bytes()))),
            Target::UnixAbstract(n) => params.push(("socket", format!("%00{}", encode_bytes(n)))),
            Target::Tcp { .. } => {}
        }
        let t = &self.tls_params;
        let text = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
        let path = |p: &PathBuf| encode_bytes(p.as_os_str().as_bytes());
        params.extend(t.kind.map(|k| ("tls-type", k.as_str().to_owned())));
        params.extend(t.hostname.as_deref().map(|h| ("tls-hostname", text(h))));
        params.extend(t.verify_peer.map(|v| ("tls-verify-peer", u8::from(v).to_string())));
        params.extend(t.certificates.as_ref().map(|p| ("tls-certificates", path(p))));
        params.extend(t.psk_file.as_ref().map(|p| ("tls-psk-file", path(p))));
        params.extend(t.username.as_deref().map(|u| ("tls-username", text(u))));
        for (i, (k, v)) in params.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

fn encode_bytes(b: &[u8]) -> String {
    percent_encoding::percent_encode(b, COMPONENT).to_string()
}

/// RFC 3986 allows only unreserved, reserved and `%XX`-escaped characters.
fn check_chars(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let ok = c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&c);
        if !ok {
            return Err(format!("character {:?} at position {i} must be %-encoded", char::from(c)));
        }
        if c == b'%' && !(b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))) {
            return Err(format!("'%' at position {i} is not followed by two hex digits"));
        }
    }
    Ok(())
}

fn decode_utf8(s: &str, what: &str) -> Result<String, String> {
    let text = percent_decode_str(s).decode_utf8().map_err(|_| format!("{what} is not valid UTF-8"))?;
    if text.contains('\0') {
        return Err(format!("{what} contains NUL"));
    }
    Ok(text.into_owned())
}

fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unterminated '[' in host")?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("garbage after ']' in host")?),
        };
        (addr.to_string(), port)
    } else {
        let (h, p) = s.rsplit_once(':').map_or((s, None), |(h, p)| (h, Some(p)));
        if h.contains(':') {
            return Err("an IPv6 address must be written in brackets".into());
        }
        if h.contains(['[', ']']) {
            return Err("brackets are only allowed around an IPv6 address".into());
        }
        (decode_utf8(h, "host name")?, p)
    };
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => return Err(format!("invalid port '{p}'")),
        },
    };
    // "It is up to the NBD client what should happen if the authority field
    // is not present for TCP/IP connections": nbdx uses localhost.
    let host = if host.is_empty() { "localhost".to_owned() } else { host };
    Ok((host, port))
}

/// The query parameters nbdx understands.
#[derive(Default)]
struct Query {
    socket: Option<Vec<u8>>,
    tls: TlsParams,
}

impl Query {
    fn parse(query: &str) -> Result<Self, String> {
        let mut q = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_utf8(k, "parameter name")?;
            if key.starts_with("x-") {
                continue;
            }
            let canonical = if key == "tls-verification" { "tls-verify-peer".to_owned() } else { key.clone() };
            if seen.contains(&canonical) {
                return Err(format!("parameter '{key}' given more than once"));
            }
            seen.push(canonical);
            let raw: Vec<u8> = percent_decode_str(v).collect();
            let text = || decode_utf8(v, &format!("value of '{key}'"));
            let path = || (!raw.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(&raw))).ok_or("empty path");
            match key.as_str() {
                "socket" => q.socket = Some(raw.clone()),
                "tls-type" => {
                    q.tls.kind = Some(match text()?.as_str() {
                        "anon" => TlsType::Anon,
                        "x509" => TlsType::X509,
                        "psk" => TlsType::Psk,
                        other => return Err(format!("tls-type '{other}' is not anon, x509 or psk")),
                    })
                }
                "tls-hostname" => q.tls.hostname = Some(text()?),
                "tls-verify-peer" | "tls-verification" => {
                    q.tls.verify_peer = Some(match text()?.as_str() {
                        "1" | "true" | "yes" | "on" => true,
                        "0" | "false" | "no" | "off" => false,
                        other => return Err(format!("{key} '{other}' is not 0 or 1")),
                    })
                }
                "tls-certificates" => q.tls.certificates = Some(path()?),
                "tls-psk-file" => q.tls.psk_file = Some(path()?),
                "tls-username" => q.tls.username = Some(text()?),
                other => return Err(format!("unknown query parameter '{other}'")),
            }
        }
        Ok(q)
    }
}
