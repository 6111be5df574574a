//! The HAProxy 2.6 sidecar configuration, rendered sans-IO: from this
//! node's registration (public port, local app address, upstreams), its
//! Connect leaf and the roots, to `haproxy.cfg` text and the files it
//! references. Writing the files and running the process is
//! [`super::managed`]'s job.
//!
//! What the rendered configuration does (facts and traps:
//! `reference/connect-and-sidecars.md` §4):
//! - **Public frontend** `public`: TLS on [`HaproxyConfig::public`],
//!   client certificates required and checked against the roots. The leaf
//!   is loaded through a crt-list line *with an SNI filter*
//!   (`sidecar.invalid`): HAProxy 2.6 otherwise stops enforcing
//!   `verify required` on that bind after a runtime certificate commit.
//!   An inbound caller is let through only if its certificate carries one
//!   of the allowed SPIFFE IDs: HAProxy 2.6 has no fetch for a URI SAN
//!   (and `verifyhost` checks DNS names), so an ACL matches, with a
//!   regular expression over `ssl_c_der,hex`, the whole DER of a
//!   subjectAltName *extension* holding exactly that one URI
//!   (`san_extension_regex`): the extension's SEQUENCE with its length,
//!   the OID 2.5.29.17 (`0603551D11`), the optional critical flag, the
//!   OCTET STRING and the GeneralNames SEQUENCE with their lengths, then
//!   the URI entry (`86`, its length, the URI). The match starts on a
//!   byte boundary (`^(..)*?`), never at a nibble offset, so a field
//!   holding the ID's bytes elsewhere (a subject CN or O, another
//!   extension's value) does not pass: the lengths tie the bytes to an
//!   extension that holds the URI and nothing else. The length bytes make
//!   `svc/web` unable to match `svc/web2`. Matching is byte for byte
//!   (Consul's own check ignores ASCII case; write IDs as Consul issues
//!   them, lowercase). A leaf with other SANs besides the URI (DNS names,
//!   IPs) is refused: Consul's service leaves carry the URI alone. The
//!   limit: the match is on bytes, not a parse, so a CA that signs
//!   caller-chosen bytes into a leaf (an RSA modulus chosen to hold this
//!   exact byte run, through `/v1/connect/ca/sign`) could still forge
//!   one; Consul's built-in CA issues EC keys by default. No allowed ID:
//!   every caller is refused.
//! - **Local backend** `app`: the node's listener on loopback.
//! - **One upstream per peer**: a plain frontend on `127.0.0.1:<local
//!   port>` and a backend that dials the peer's sidecar with TLS,
//!   presenting this node's leaf and verifying the peer's chain against
//!   the roots. HAProxy 2.6 checks the chain only, not the peer's SPIFFE
//!   ID: the peer's inbound ACL is the control (the expected ID is
//!   written as a comment, for operators).
//! - TCP mode, TCP keep-alives both ways, inactivity timeouts of an hour
//!   by default (node connections carry heartbeats every few hundred
//!   milliseconds, so only a dead peer idles that long), and
//!   `hard-stop-after` to bound how long a worker replaced by a reload
//!   keeps serving its established connections.
//! - An admin stats socket (`stats.sock`, level admin) for session counts
//!   (`show stat`) and the runtime API; logs on stdout.
//!
//! Rendering is deterministic (upstreams sorted by local port) and checks
//! every input that ends up in the text: nothing given can inject a line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A peer reached through this node's sidecar: the data the Consul
/// adapter registers for each peer (one upstream per peer node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HaproxyUpstream {
    /// The peer's node id (the connector dials by it).
    pub node: String,
    /// The peer's own destination service name (e.g. `<cluster>-<node>`).
    pub destination: String,
    /// The local port this node's sidecar listens on for that peer, on
    /// 127.0.0.1.
    pub local_port: u16,
    /// The peer's sidecar public address, `host:port`.
    pub peer_addr: String,
    /// The SPIFFE ID the peer's sidecar presents (not checkable by
    /// HAProxy 2.6: written as a comment; see the module docs).
    pub peer_id: String,
}

/// A leaf certificate, its key and the roots, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Certs {
    /// The leaf certificate, then any intermediates.
    pub chain_pem: String,
    /// The leaf's private key (SEC1 or PKCS#8).
    pub key_pem: String,
    /// Every trusted root (active and inactive).
    pub roots_pem: String,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("roots_pem", &format_args!("{} bytes", self.roots_pem.len()))
            .finish()
    }
}

/// Timeouts of the rendered configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a TCP connection to a server (the app or a peer's sidecar).
    pub connect: Duration,
    /// Inactivity on either side of an established connection (client,
    /// server and tunnel timeouts).
    pub idle: Duration,
    /// A half-closed connection's remaining side.
    pub fin: Duration,
    /// How long an inbound connection may take to complete TLS before the
    /// caller's identity is decided.
    pub inspect: Duration,
    /// How long a worker replaced by a reload keeps its established
    /// connections before they are closed (and redialed by the nodes).
    pub hard_stop_after: Duration,
}

impl Default for Timeouts {
    /// connect 5 s, idle 1 h, fin 10 s, inspect 5 s, hard stop after 10 min.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            fin: Duration::from_secs(10),
            inspect: Duration::from_secs(5),
            hard_stop_after: Duration::from_secs(600),
        }
    }
}

/// Everything the rendered configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// Where the files live (the paths in the text point there).
    pub dir: PathBuf,
    /// The public (mTLS) bind address, `host:port` (e.g. `0.0.0.0:21000`).
    pub public: String,
    /// The node's own listener, on loopback (`127.0.0.1:<port>`).
    pub app: String,
    /// This node's leaf and the roots.
    pub certs: Certs,
    /// The SPIFFE IDs allowed to call in (the intentions to this node).
    pub allow: Vec<String>,
    /// One per peer.
    pub upstreams: Vec<HaproxyUpstream>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// The files of a rendered configuration, by name in [`HaproxyConfig::dir`].
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) mod files {
    /// The configuration.
    pub const CONFIG: &str = "haproxy.cfg";
    /// The leaf certificate chain followed by its key.
    pub const LEAF: &str = "leaf.pem";
    /// The roots.
    pub const ROOTS: &str = "roots.pem";
    /// The public bind's certificate list.
    pub const CRT_LIST: &str = "public.crtlist";
    /// The admin stats socket (created by HAProxy).
    pub const STATS_SOCKET: &str = "stats.sock";
    /// The master CLI socket (created by HAProxy, `-S`).
    pub const MASTER_SOCKET: &str = "master.sock";
    /// The master's pid file (created by HAProxy, `-p`).
    pub const PID_FILE: &str = "haproxy.pid";
}

/// A rendered configuration: file names (in [`HaproxyConfig::dir`]) and
/// contents, the configuration first.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// `(file name, contents)`.
    pub files: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.files.iter().map(|(n, _)| n))
            .finish()
    }
}

#[cfg_attr(not(feature = "internals"), allow(dead_code))]
impl Rendered {
    /// The configuration text.
    pub fn config(&self) -> &str {
        self.file(files::CONFIG).unwrap_or_default()
    }

    /// The contents of file `name`, if rendered.
    pub fn file(&self, name: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.as_str())
    }
}

/// An input that cannot go into the configuration.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("haproxy sidecar config: {0}")]
pub(crate) struct RenderError(pub String);

/// The name the public bind's crt-list line filters on: never sent by a
/// client, it only gives the leaf an SNI context (see the module docs).
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) const SNI_FILTER: &str = "sidecar.invalid";

/// Renders the configuration and the files it references.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) fn render(cfg: &HaproxyConfig) -> Result<Rendered, RenderError> {
    let dir = path_text(&cfg.dir)?;
    check_addr("public address", &cfg.public)?;
    check_addr("app address", &cfg.app)?;
    check_pem("leaf certificate", &cfg.certs.chain_pem, "CERTIFICATE")?;
    check_pem("leaf key", &cfg.certs.key_pem, "PRIVATE KEY")?;
    check_pem("roots", &cfg.certs.roots_pem, "CERTIFICATE")?;
    for id in &cfg.allow {
        check_spiffe(id)?;
    }
    let mut upstreams = cfg.upstreams.clone();
    upstreams.sort_by_key(|u| u.local_port);
    for (i, u) in upstreams.iter().enumerate() {
        check_word("upstream node id", &u.node)?;
        check_word("upstream destination", &u.destination)?;
        check_addr("peer sidecar address", &u.peer_addr)?;
        check_spiffe(&u.peer_id)?;
        if u.local_port == 0 {
            return Err(RenderError(format!("upstream {}: local port 0", u.node)));
        }
        if i > 0 && upstreams[i - 1].local_port == u.local_port {
            return Err(RenderError(format!(
                "upstreams {} and {} share local port {}",
                upstreams[i - 1].node,
                u.node,
                u.local_port
            )));
        }
    }
    let leaf = format!("{dir}/{}", files::LEAF);
    let roots = format!("{dir}/{}", files::ROOTS);
    let t = &cfg.timeouts;

    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Rendered by mesh (mesh::sidecar::haproxy); do not edit."
    );
    let _ = writeln!(c, "global");
    let _ = writeln!(c, "    master-worker");
    let _ = writeln!(
        c,
        "    stats socket {dir}/{} mode 600 level admin expose-fd listeners",
        files::STATS_SOCKET
    );
    let _ = writeln!(c, "    hard-stop-after {}", ms(t.hard_stop_after));
    let _ = writeln!(c, "    log stdout format raw local0 info");
    let _ = writeln!(c);
    let _ = writeln!(c, "defaults");
    let _ = writeln!(c, "    mode tcp");
    let _ = writeln!(c, "    log global");
    let _ = writeln!(c, "    option tcplog");
    let _ = writeln!(c, "    option dontlognull");
    let _ = writeln!(c, "    option clitcpka");
    let _ = writeln!(c, "    option srvtcpka");
    let _ = writeln!(c, "    timeout connect {}", ms(t.connect));
    let _ = writeln!(c, "    timeout client {}", ms(t.idle));
    let _ = writeln!(c, "    timeout server {}", ms(t.idle));
    let _ = writeln!(c, "    timeout tunnel {}", ms(t.idle));
    let _ = writeln!(c, "    timeout client-fin {}", ms(t.fin));
    let _ = writeln!(c, "    timeout server-fin {}", ms(t.fin));
    let _ = writeln!(c);
    let _ = writeln!(c, "# Inbound: mTLS from peers' sidecars to this node.");
    let _ = writeln!(c, "frontend public");
    let _ = writeln!(
        c,
        "    bind {} ssl crt-list {dir}/{}",
        cfg.public,
        files::CRT_LIST
    );
    let _ = writeln!(c, "    tcp-request inspect-delay {}", ms(t.inspect));
    if cfg.allow.is_empty() {
        let _ = writeln!(c, "    # No caller is allowed.");
    } else {
        for id in &cfg.allow {
            let _ = writeln!(c, "    # allow {id}");
        }
        let patterns: Vec<String> = cfg.allow.iter().map(|id| san_extension_regex(id)).collect();
        let _ = writeln!(
            c,
            "    acl allowed_caller ssl_c_der,hex -m reg {}",
            patterns.join(" ")
        );
        let _ = writeln!(
            c,
            "    tcp-request content accept if {{ ssl_c_verify 0 }} allowed_caller"
        );
    }
    let _ = writeln!(c, "    tcp-request content reject");
    let _ = writeln!(c, "    default_backend app");
    let _ = writeln!(c);
    let _ = writeln!(c, "backend app");
    let _ = writeln!(c, "    server app {}", cfg.app);
    for u in &upstreams {
        let p = u.local_port;
        let _ = writeln!(c);
        let _ = writeln!(
            c,
            "# Upstream to node {} ({}), expected to present {}.",
            u.node, u.destination, u.peer_id
        );
        let _ = writeln!(c, "frontend upstream_{p}");
        let _ = writeln!(c, "    bind 127.0.0.1:{p}");
        let _ = writeln!(c, "    default_backend peer_{p}");
        let _ = writeln!(c, "backend peer_{p}");
        let _ = writeln!(
            c,
            "    server peer {} ssl crt {leaf} ca-file {roots} verify required",
            u.peer_addr
        );
    }

    let mut leaf_pem = cfg.certs.chain_pem.trim_end().to_owned();
    leaf_pem.push('\n');
    leaf_pem.push_str(cfg.certs.key_pem.trim_end());
    leaf_pem.push('\n');
    let crt_list = format!("{leaf} [ca-file {roots} verify required] {SNI_FILTER}\n");
    Ok(Rendered {
        files: vec![
            (files::CONFIG, c),
            (files::LEAF, leaf_pem),
            (
                files::ROOTS,
                format!("{}\n", cfg.certs.roots_pem.trim_end()),
            ),
            (files::CRT_LIST, crt_list),
        ],
    })
}

/// The DER of a URI SAN entry (tag `86`, the length, the URI) in
/// uppercase hex, as `ssl_c_der,hex` prints it.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub(crate) fn san_uri_hex(uri: &str) -> String {
    hex(&tlv(0x86, uri.as_bytes()))
}

/// The ACL pattern (a PCRE for `ssl_c_der,hex -m reg`) of a certificate
/// whose subjectAltName extension holds `uri` and nothing else: from a
/// byte boundary of the certificate, the extension's DER, critical or
/// not, with every length computed from the URI's (see the module docs).
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) fn san_extension_regex(uri: &str) -> String {
    let names = tlv(0x30, &tlv(0x86, uri.as_bytes()));
    let value = tlv(0x04, &names);
    // 06 03 55 1D 11: the OID 2.5.29.17; 01 01 FF: critical TRUE.
    let oid = [0x06, 0x03, 0x55, 0x1D, 0x11];
    let plain = tlv(0x30, &[&oid[..], &value].concat());
    let critical = tlv(0x30, &[&oid[..], &[0x01, 0x01, 0xFF], &value].concat());
    format!("^(..)*?({}|{})", hex(&plain), hex(&critical))
}

/// A DER TLV: `tag`, the definite length (short or long form), `value`.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut der = vec![tag];
    if len < 0x80 {
        der.push(len as u8);
    } else if len <= 0xff {
        der.extend([0x81, len as u8]);
    } else if len <= 0xffff {
        der.extend([0x82, (len >> 8) as u8, len as u8]);
    } else {
        der.extend([0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
    }
    der.extend(value);
    der
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A duration as HAProxy reads it, in milliseconds (at least 1).
fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn path_text(p: &Path) -> Result<String, RenderError> {
    let s = p
        .to_str()
        .ok_or_else(|| RenderError(format!("directory {} is not UTF-8", p.display())))?;
    if !p.is_absolute() {
        return Err(RenderError(format!("directory {s:?} is not absolute")));
    }
    check_word("directory", s)?;
    Ok(s.trim_end_matches('/').to_owned())
}

/// No whitespace, no control character, nothing HAProxy reads specially.
fn check_word(what: &str, s: &str) -> Result<(), RenderError> {
    if s.is_empty() {
        return Err(RenderError(format!("empty {what}")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '#' | '"' | '\'' | '\\'))
    {
        return Err(RenderError(format!("{what} {s:?} contains {c:?}")));
    }
    Ok(())
}

fn check_addr(what: &str, s: &str) -> Result<(), RenderError> {
    check_word(what, s)?;
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(RenderError(format!("{what} {s:?} is not host:port")));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(RenderError(format!(
            "{what} {s:?} is not host:port with a port from 1 to 65535"
        )));
    }
    Ok(())
}

fn check_spiffe(id: &str) -> Result<(), RenderError> {
    check_word("SPIFFE ID", id)?;
    if !id.starts_with("spiffe://") || id.len() > 0xffff {
        return Err(RenderError(format!("{id:?} is not a SPIFFE ID")));
    }
    Ok(())
}

fn check_pem(what: &str, pem: &str, label: &str) -> Result<(), RenderError> {
    if !pem.contains("-----BEGIN ") || !pem.contains(label) {
        return Err(RenderError(format!("{what}: no PEM {label} block")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn cfg() -> HaproxyConfig {
        HaproxyConfig {
            dir: "/run/mesh".into(),
            public: "0.0.0.0:21000".into(),
            app: "127.0.0.1:7000".into(),
            certs: Certs {
                chain_pem: CERT.into(),
                key_pem: KEY.into(),
                roots_pem: CERT.into(),
            },
            allow: vec!["spiffe://td/ns/default/dc/dc1/svc/web".into()],
            upstreams: vec![
                HaproxyUpstream {
                    node: "c".into(),
                    destination: "mesh-c".into(),
                    local_port: 9192,
                    peer_addr: "10.0.0.7:21000".into(),
                    peer_id: "spiffe://td/ns/default/dc/dc1/svc/mesh-c".into(),
                },
                HaproxyUpstream {
                    node: "b".into(),
                    destination: "mesh-b".into(),
                    local_port: 9191,
                    peer_addr: "10.0.0.6:21000".into(),
                    peer_id: "spiffe://td/ns/default/dc/dc1/svc/mesh-b".into(),
                },
            ],
            timeouts: Timeouts::default(),
        }
    }

    #[test]
    fn the_public_frontend_requires_client_certificates_through_a_filtered_crt_list() {
        let r = render(&cfg()).unwrap();
        let c = r.config();
        assert!(c.contains("    master-worker\n"), "{c}");
        assert!(
            c.contains("    bind 0.0.0.0:21000 ssl crt-list /run/mesh/public.crtlist\n"),
            "{c}"
        );
        assert!(!c.contains(
            "ssl crt /run/mesh/leaf.pem ca-file /run/mesh/roots.pem verify required\n    tcp"
        ));
        assert_eq!(
            r.file(files::CRT_LIST).unwrap(),
            "/run/mesh/leaf.pem [ca-file /run/mesh/roots.pem verify required] sidecar.invalid\n"
        );
        assert_eq!(r.file(files::LEAF).unwrap(), format!("{}{}", CERT, KEY));
        assert_eq!(r.file(files::ROOTS).unwrap(), CERT);
        assert!(
            c.contains("backend app\n    server app 127.0.0.1:7000\n"),
            "{c}"
        );
        assert!(c.contains("stats socket /run/mesh/stats.sock mode 600 level admin"));
    }

    #[test]
    fn inbound_callers_are_matched_on_the_der_of_their_uri_san() {
        let id = "spiffe://td/ns/default/dc/dc1/svc/web";
        let hex = san_uri_hex(id);
        // 0x86, then the length (37 bytes), then the URI.
        assert_eq!(&hex[..4], "8625");
        assert_eq!(hex.len(), 4 + 2 * id.len());
        assert!(hex[4..].starts_with("7370696666653A2F2F"), "{hex}");
        let c = render(&cfg()).unwrap().config().to_owned();
        assert!(
            c.contains(&format!(
                "acl allowed_caller ssl_c_der,hex -m reg {}\n",
                san_extension_regex(id)
            )),
            "{c}"
        );
        assert!(!c.contains("-m sub"), "{c}");
        let accept = c.find("tcp-request content accept if").unwrap();
        let reject = c.find("tcp-request content reject").unwrap();
        assert!(accept < reject);
        // A longer ID takes the long length form.
        let long = format!("spiffe://td/ns/default/dc/dc1/svc/{}", "x".repeat(120));
        assert!(san_uri_hex(&long).starts_with(&format!("8681{:02X}", long.len())));
    }

    #[test]
    fn the_pattern_is_the_whole_san_extension_from_a_byte_boundary() {
        let id = "spiffe://td/ns/default/dc/dc1/svc/web";
        let entry = san_uri_hex(id); // 86 25 <37 bytes>
                                     // GeneralNames 30 27, OCTET STRING 04 29, extension 30 30 (or
                                     // 30 33 with the critical flag).
        let plain = format!("30300603551D11042930278625{}", &entry[4..]);
        let critical = format!("30330603551D110101FF042930278625{}", &entry[4..]);
        assert_eq!(
            san_extension_regex(id),
            format!("^(..)*?({plain}|{critical})")
        );
        // Long lengths: a URI of 200 bytes gives 81 C8, then 30 81 CB, ...
        let long = format!("spiffe://td/{}", "x".repeat(188));
        assert_eq!(long.len(), 200);
        let r = san_extension_regex(&long);
        assert!(r.contains("0603551D110481CE3081CB8681C8"), "{r}");
    }

    #[test]
    fn no_allowed_caller_rejects_every_one() {
        let mut cfg = cfg();
        cfg.allow.clear();
        let c = render(&cfg).unwrap().config().to_owned();
        assert!(!c.contains("accept"), "{c}");
        assert!(c.contains("tcp-request content reject\n"));
    }

    #[test]
    fn upstreams_are_loopback_frontends_and_tls_backends_sorted_by_port() {
        let c = render(&cfg()).unwrap().config().to_owned();
        let b = c.find("frontend upstream_9191").unwrap();
        let cc = c.find("frontend upstream_9192").unwrap();
        assert!(b < cc);
        assert!(c.contains(
            "frontend upstream_9191\n    bind 127.0.0.1:9191\n    default_backend peer_9191\n"
        ));
        assert!(c.contains(
            "backend peer_9191\n    server peer 10.0.0.6:21000 ssl crt /run/mesh/leaf.pem ca-file /run/mesh/roots.pem verify required\n"
        ));
        assert!(c.contains("# Upstream to node b (mesh-b), expected to present spiffe://td/ns/default/dc/dc1/svc/mesh-b."));
    }

    #[test]
    fn timeouts_fit_long_lived_connections() {
        let c = render(&cfg()).unwrap().config().to_owned();
        for line in [
            "    mode tcp\n",
            "    timeout client 3600000ms\n",
            "    timeout server 3600000ms\n",
            "    timeout tunnel 3600000ms\n",
            "    option clitcpka\n",
            "    option srvtcpka\n",
            "    hard-stop-after 600000ms\n",
        ] {
            assert!(c.contains(line), "{line:?} missing in\n{c}");
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_what_is_wrong() {
        type Change = fn(&mut HaproxyConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.public = "0.0.0.0".into(), "public address"),
            (|c| c.app = "127.0.0.1:0".into(), "app address"),
            (|c| c.allow.push("web".into()), "not a SPIFFE ID"),
            (
                |c| c.allow.push("spiffe://td/x\n    bind :1".into()),
                "contains",
            ),
            (|c| c.upstreams[0].node = "a b".into(), "upstream node id"),
            (
                |c| c.upstreams[1].local_port = 9192,
                "share local port 9192",
            ),
            (|c| c.upstreams[0].local_port = 0, "local port 0"),
            (|c| c.certs.key_pem = "nope".into(), "leaf key"),
            (|c| c.dir = "relative".into(), "not absolute"),
            (
                |c| c.upstreams[0].peer_addr = "10.0.0.7:21000#".into(),
                "peer sidecar address",
            ),
        ];
        for (change, want) in cases {
            let mut c = cfg();
            change(&mut c);
            let err = render(&c).unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not say {want}");
        }
    }

    #[test]
    fn rendering_is_deterministic() {
        let mut shuffled = cfg();
        shuffled.upstreams.reverse();
        assert_eq!(render(&cfg()).unwrap(), render(&shuffled).unwrap());
    }
}
