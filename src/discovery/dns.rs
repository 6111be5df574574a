//! Seeds given as a DNS name (feature `dns`): [`DnsSeeds`].
//!
//! (The contract is on [`DnsSeeds`], the public face of this module.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

/// Seeds from a DNS name: `NodeBuilder::dns_seeds`.
///
/// Static discovery with a name instead of a list: the name (a headless
/// Kubernetes Service that publishes not-ready pods, say) is resolved at
/// start and every [`DnsSeeds::every`], and its addresses, each with the
/// given port, become the seeds the node dials. An address gone from the
/// answer stops being dialed (its backoff is forgotten); a seed that
/// answered stays a peer as long as its connection lives, whatever DNS
/// says next: seeds are hints, the handshake is the truth.
///
/// Resolution goes through hickory, which reads `/etc/resolv.conf` and
/// `/etc/hosts` itself: no `getaddrinfo`, so it works in a statically
/// linked binary. One address family: IPv4 if the name has any, else IPv6
/// (a dual-stack pod has one of each). Its cache is small and holds an
/// answer at most one period, so a change is seen at the next resolution.
///
/// Failure: a resolution that fails (no such name yet, a server down) is
/// logged (once at warn level, then at debug) and the last answer stays;
/// the node keeps its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSeeds {
    name: String,
    port: u16,
    every: Duration,
    nameserver: Option<SocketAddr>,
}

impl DnsSeeds {
    /// The addresses of `name`, each with `port`, re-resolved every 5 s.
    pub fn new(name: impl Into<String>, port: u16) -> DnsSeeds {
        DnsSeeds {
            name: name.into(),
            port,
            every: Duration::from_secs(5),
            nameserver: None,
        }
    }

    /// How often the name is resolved again (at least 10 ms).
    pub fn every(mut self, every: Duration) -> DnsSeeds {
        self.every = every.max(Duration::from_millis(10));
        self
    }

    /// Asks this name server (over UDP, then TCP) instead of the ones
    /// `/etc/resolv.conf` lists, with no search domains: give the name
    /// whole.
    pub fn nameserver(mut self, addr: SocketAddr) -> DnsSeeds {
        self.nameserver = Some(addr);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn period(&self) -> Duration {
        self.every
    }

    /// A resolver as configured: fails if the system's configuration
    /// cannot be read.
    pub(crate) fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = match self.nameserver {
            Some(addr) => TokioResolver::builder_with_config(
                ResolverConfig::from_parts(
                    None,
                    Vec::new(),
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
                ),
                TokioConnectionProvider::default(),
            ),
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system's DNS configuration: {e}"))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        opts.cache_size = 8;
        opts.positive_max_ttl = Some(self.every);
        opts.negative_max_ttl = Some(self.every);
        opts.timeout = self
            .every
            .clamp(Duration::from_millis(100), Duration::from_secs(3));
        Ok(builder.build())
    }

    /// Resolves the name once: its addresses with the port, `ip:port`,
    /// sorted.
    pub(crate) async fn resolve(&self, resolver: &TokioResolver) -> Result<Vec<String>, String> {
        let ips = resolver
            .lookup_ip(self.name.as_str())
            .await
            .map_err(|e| format!("resolving {}: {e}", self.name))?;
        let mut addrs: Vec<String> = ips
            .iter()
            .map(|ip: IpAddr| SocketAddr::new(ip, self.port).to_string())
            .collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}
