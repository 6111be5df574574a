//! Host names to socket addresses, for the connections mesh opens itself:
//! node links (`transport::tcp`, under TLS too) and the Consul client.
//!
//! A literal `ip:port` (or `[v6]:port`) is parsed, never looked up. A
//! `name:port` goes, with feature `dns`, through hickory, which reads
//! `/etc/resolv.conf` and `/etc/hosts` itself: no `getaddrinfo`, so a
//! statically linked binary (the `FROM scratch` image, which has no NSS
//! modules to load) resolves names too. Without `dns` it goes through
//! tokio's `lookup_host` (`getaddrinfo` on the blocking pool), as before.
//!
//! Each lookup reads the system configuration afresh and keeps no cache
//! of its own (a resolver outlives no runtime: the suites run many), so a
//! name that moved is seen at the next dial. A failed lookup is an
//! `io::Error` naming the host.

use std::io;
use std::net::SocketAddr;

/// The addresses of `addr` (`host:port`), in the resolver's order.
pub(crate) async fn lookup(addr: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    #[cfg(feature = "dns")]
    {
        let (host, port) = split(addr)?;
        hickory(host, port).await
    }
    #[cfg(not(feature = "dns"))]
    {
        Ok(tokio::net::lookup_host(addr).await?.collect())
    }
}

/// `host:port` into its parts (`[v6]:port` brackets removed).
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
fn split(addr: &str) -> io::Result<(&str, u16)> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} is not host:port"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let port = port.parse().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid());
    }
    Ok((host, port))
}

/// Looks `host` up through hickory with the system's configuration.
#[cfg(feature = "dns")]
pub(crate) async fn hickory(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    use hickory_resolver::config::LookupIpStrategy;
    use hickory_resolver::TokioResolver;
    let mut builder = TokioResolver::builder_tokio()
        .map_err(|e| io::Error::other(format!("reading the system's DNS configuration: {e}")))?;
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    opts.cache_size = 0;
    let resolver = builder.build();
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("resolving {host}: {e}")))?;
    Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

/// reqwest's resolver: hickory, as above (port 0: reqwest sets the URL's).
#[cfg(all(feature = "dns", feature = "consul"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hickory;

#[cfg(all(feature = "dns", feature = "consul"))]
impl reqwest::dns::Resolve for Hickory {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = hickory(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_split() {
        assert_eq!(split("db.internal:5432").unwrap(), ("db.internal", 5432));
        assert_eq!(split("[::1]:7000").unwrap(), ("::1", 7000));
        assert!(split("nohost").is_err());
        assert!(split(":7000").is_err());
        assert!(split("host:port").is_err());
    }

    #[tokio::test]
    async fn literals_are_parsed_and_names_resolved() {
        assert_eq!(
            lookup("127.0.0.1:7000").await.unwrap(),
            ["127.0.0.1:7000".parse().unwrap()]
        );
        assert_eq!(
            lookup("[::1]:7000").await.unwrap(),
            ["[::1]:7000".parse().unwrap()]
        );
        // /etc/hosts names `localhost` on any machine.
        let local = lookup("localhost:7000").await.unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7000),
            "{local:?}"
        );
        assert!(!local.is_empty());
        let err = lookup("no-such-host.invalid:7000").await.unwrap_err();
        assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    }
}
