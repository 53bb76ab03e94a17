//! Pod IPs: each node owns a /16 pod range (by default a loopback one,
//! `127.N.0.0/16`, so pods are reachable on one machine without root) and
//! hands each pod the lowest free address in it. `127.N.0.1` is the node's
//! own address (its InternalIP, where the agent serves logs).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The second octet the service range (127.96.0.0/16) uses; no node takes it.
const SERVICE_OCTET: u8 = 96;

/// A node's pod range: `a.b.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRange {
    pub a: u8,
    pub b: u8,
}

impl PodRange {
    /// Parses `127.5.0.0/16` (or just `5`, meaning `127.5.0.0/16`).
    pub fn parse(s: &str) -> Result<PodRange, String> {
        if let Ok(b) = s.parse::<u8>() {
            return PodRange::loopback(b);
        }
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("pod range {s:?} is not a CIDR like 127.5.0.0/16"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("pod range {s:?}: {ip:?} is not an IPv4 address"))?;
        let o = ip.octets();
        if len != "16" || o[2] != 0 || o[3] != 0 {
            return Err(format!("pod range {s:?} must be a /16 like 127.5.0.0/16"));
        }
        if o[0] == 127 {
            return PodRange::loopback(o[1]);
        }
        Ok(PodRange { a: o[0], b: o[1] })
    }

    fn loopback(b: u8) -> Result<PodRange, String> {
        if b == 0 || b == SERVICE_OCTET || b == 255 {
            return Err(format!(
                "pod range 127.{b}.0.0/16 is reserved (127.0.0.0/16 is the host's, 127.96.0.0/16 the services')"
            ));
        }
        Ok(PodRange { a: 127, b })
    }

    /// The default range of a node: `127.N.0.0/16` with N from a hash of its
    /// name (FNV-1a), skipping the reserved octets. Give `--pod-range` when
    /// two node names collide.
    pub fn from_name(name: &str) -> PodRange {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        let allowed: Vec<u8> = (1..=254).filter(|b| *b != SERVICE_OCTET).collect();
        PodRange {
            a: 127,
            b: allowed[(h as usize) % allowed.len()],
        }
    }

    /// The node's own address in its range (`a.b.0.1`).
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.a, self.b, 0, 1)
    }

    /// The `n`-th pod address (n = 0 is `a.b.0.2`).
    fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let i = n + 2;
        if i >= 65_535 {
            return None;
        }
        Some(Ipv4Addr::new(self.a, self.b, (i >> 8) as u8, i as u8))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        o[0] == self.a && o[1] == self.b
    }

    pub fn cidr(&self) -> String {
        format!("{}.{}.0.0/16", self.a, self.b)
    }
}

/// The pod addresses in use on this node.
#[derive(Debug)]
pub struct Ipam {
    range: PodRange,
    used: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    pub fn new(range: PodRange) -> Self {
        Ipam {
            range,
            used: BTreeSet::new(),
        }
    }

    /// Marks an address taken (pods adopted after a restart).
    pub fn reserve(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    /// The lowest free address, now taken.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let ip = (0..).map_while(|n| self.range.nth(n)).find(|ip| {
            let o = ip.octets();
            o[3] != 0 && o[3] != 255 && !self.used.contains(ip)
        })?;
        self.used.insert(ip);
        Some(ip)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reserved_ones_are_refused() {
        assert_eq!(
            PodRange::parse("127.5.0.0/16"),
            Ok(PodRange { a: 127, b: 5 })
        );
        assert_eq!(PodRange::parse("7"), Ok(PodRange { a: 127, b: 7 }));
        assert!(PodRange::parse("127.96.0.0/16").is_err());
        assert!(PodRange::parse("127.0.0.0/16").is_err());
        assert!(PodRange::parse("127.5.0.0/24").is_err());
        assert!(PodRange::parse("nonsense").is_err());
        let r = PodRange::from_name("n1");
        assert_eq!(r, PodRange::from_name("n1"));
        assert!(r.b != 0 && r.b != 96 && r.b != 255);
    }

    #[test]
    fn allocation_takes_the_lowest_free_address() {
        let r = PodRange { a: 127, b: 9 };
        let mut ipam = Ipam::new(r);
        assert_eq!(r.node_ip(), Ipv4Addr::new(127, 9, 0, 1));
        let a = ipam.allocate().unwrap();
        let b = ipam.allocate().unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(127, 9, 0, 2), Ipv4Addr::new(127, 9, 0, 3))
        );
        ipam.release(a);
        assert_eq!(ipam.allocate(), Some(a));
        ipam.reserve(Ipv4Addr::new(127, 9, 0, 4));
        assert_eq!(ipam.allocate(), Some(Ipv4Addr::new(127, 9, 0, 5)));
    }
}
