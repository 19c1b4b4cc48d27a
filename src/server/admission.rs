//! Who may hold a connection before logging in: the PROXY trust list and the per-address cap
//! on connections that have not logged in yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

/// Peers allowed to send a PROXY header (`proxy_trusted_cidrs`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A trust list of these networks (empty trusts no one).
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    /// Whether `peer` may send a PROXY header. An IPv4 peer seen through an IPv6 socket
    /// (`::ffff:a.b.c.d`) matches IPv4 networks.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }
}

/// The address a per-address limit counts: IPv4 as is (also when seen as `::ffff:a.b.c.d`),
/// IPv6 by its /64 prefix, because one host commonly holds a whole /64 and could otherwise
/// rotate through addresses to dodge every limit.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Counts connections that have not logged in, per client address, up to a cap.
#[derive(Debug)]
pub struct Unauthenticated {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl Unauthenticated {
    /// A counter allowing `max` connections per address.
    pub fn new(max: u32) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `addr`; `None` when the address already holds `max`.
    pub fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let addr = addr.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(addr).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            addr,
        })
    }

    /// Connections from `addr` holding a slot now.
    pub fn count(&self, addr: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&addr.to_canonical()).copied().unwrap_or(0)
    }
}

/// One not-logged-in connection's place in [`Unauthenticated`]; released on drop.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<Unauthenticated>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            // No entry per address that ever connected: the map holds only current ones.
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_ipv4_hosts_and_ipv6_slash_64s() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), "::");
    }

    #[test]
    fn trust_list_matches_v4_v6_and_mapped() {
        let t = TrustedProxies::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(t.trusts("127.0.0.1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.2".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(!t.trusts("fe80::1".parse().unwrap()));
        assert!(!TrustedProxies::default().trusts("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn slots_are_capped_per_address_and_released() {
        let u = Unauthenticated::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = u.take(a).unwrap();
        let _s2 = u.take(a).unwrap();
        assert!(u.take(a).is_none());
        assert!(u.take(b).is_some());
        drop(s1);
        assert_eq!(u.count(a), 1);
        assert!(u.take(a).is_some());
        assert_eq!(
            u.open.lock().unwrap().len(),
            1,
            "b's entry went with its slot"
        );
    }
}
