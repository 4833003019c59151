//! SSRF guard for push targets: receivers choose their own URLs, so the hub refuses to connect
//! to private, loopback, link-local and other non-public addresses unless an operator allows a
//! range. Applied at connect time (every resolved address), so DNS rebinding cannot dodge it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An address range, `a.b.c.d/len` or `v6::/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
            None => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        // An IPv4-mapped IPv6 range is the IPv4 range it maps (matching compares them as IPv4).
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return (96..=128).contains(&len).then(|| Cidr {
                    net: IpAddr::V4(v4),
                    len: len - 96,
                });
            }
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Cidr { net: ip, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // Compare as (bits, width); IPv4-mapped IPv6 addresses count as IPv4.
        fn bits(ip: IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u128::from(u32::from(v4)), 32),
                    None => (u128::from(v6), 128),
                },
            }
        }
        let ((net, width), (addr, addr_width)) = (bits(self.net), bits(ip));
        if width != addr_width {
            return false;
        }
        let len = u32::from(self.len);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (width - len)
        };
        let width_mask = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        (net ^ addr) & mask & width_mask == 0
    }
}

/// Ranges a push may never reach by default (RFC 6890 special-purpose and private space).
const DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/96",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2001::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Decides which addresses pushes may reach.
#[derive(Debug, Clone)]
pub struct Guard {
    denied: Vec<Cidr>,
    allowed: Vec<Cidr>,
}

impl Guard {
    /// `allowed` are operator exceptions (e.g. `127.0.0.0/8` for tests or a sidecar on the host).
    pub fn new(allowed: &[String]) -> Result<Guard, String> {
        let allowed = allowed
            .iter()
            .map(|s| Cidr::parse(s).ok_or_else(|| format!("{s:?} is not an address range")))
            .collect::<Result<_, _>>()?;
        Ok(Guard {
            denied: DENIED.iter().filter_map(|s| Cidr::parse(s)).collect(),
            allowed,
        })
    }

    /// For URLs whose host is an IP literal (which never reaches the resolver): whether that
    /// address is permitted. Host names are checked when they resolve.
    pub fn permits_url(&self, url: &reqwest::Url) -> bool {
        url.host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok())
            .is_none_or(|ip| self.permits(ip))
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return true;
        }
        !self.denied.iter().any(|c| c.contains(ip))
    }
}

/// A reqwest resolver that drops every address the guard refuses.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| guard.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err("push target resolves only to addresses the hub may not reach".into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn private_and_special_ranges_are_refused_unless_allowed() {
        let g = Guard::new(&[]).expect("guard");
        assert!(!g.permits(ip("64:ff9b::a00:5")), "NAT64 to 10.0.0.5");
        assert!(!g.permits(ip("2002:a00:5::1")), "6to4");
        assert!(Cidr::parse("::ffff:10.0.0.0/104").is_some_and(|c| c.contains(ip("10.1.2.3"))));
        assert!(Cidr::parse("::ffff:10.0.0.0/64").is_none());
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!g.permits(ip(bad)), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2001:4860:4860::8888",
            "172.32.0.1",
        ] {
            assert!(g.permits(ip(good)), "{good}");
        }
        let g = Guard::new(&["127.0.0.0/8".into(), "::1".into()]).expect("guard");
        assert!(g.permits(ip("127.0.0.1")) && g.permits(ip("::1")));
        assert!(!g.permits(ip("10.0.0.1")));
        assert!(Guard::new(&["nonsense".into()]).is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }
}
