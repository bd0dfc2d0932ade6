//! Guards on who may post how much: a sender allow-list by network (before the body
//! is read), a token-bucket rate limit per source (taken once the signature
//! verified), and a budget of failed signatures per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use ipnet::IpNet;

/// Parses `10.0.0.0/8` or a bare address (as a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The sender's address: the TCP peer, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries
/// further left were written by whoever connected to the proxy, so they can lie).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for part in text.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(ip),
                // A garbled chain proves nothing: fall back to the proxy itself.
                Err(_) => return peer,
            }
        }
    }
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// Whether `ip` may post to a source; an empty list allows everyone.
pub fn allowed(ip: IpAddr, nets: &[IpNet]) -> bool {
    nets.is_empty() || nets.iter().any(|n| n.contains(&ip))
}

/// A token bucket's state: tokens left, and when they were counted.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant, per_second: f64, burst: f64) -> Result<(), Duration> {
        let refilled = self.refilled(now, per_second, burst);
        self.at = now;
        if refilled >= 1.0 {
            self.tokens = refilled - 1.0;
            Ok(())
        } else {
            self.tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / per_second))
        }
    }

    fn refilled(&self, now: Instant, per_second: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * per_second).min(burst)
    }
}

/// A token bucket: `per_second` sustained, `burst` at once.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            state: Mutex::new(Bucket::full(f64::from(burst), Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.take(now, self.per_second, self.burst)
    }
}

/// Client addresses whose failed signatures are counted each on their own; past
/// this many at once, new ones share one bucket (a crowd of addresses is throttled
/// together instead of growing the map).
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Failed signature checks, per client address: a token bucket each. Only requests
/// that failed verification are charged, so unverified traffic never spends a
/// verified sender's budget (the source's rate limit is taken after verification).
pub struct FailureLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Failures>,
}

struct Failures {
    by_address: HashMap<IpAddr, Bucket>,
    /// Shared by the addresses past [`MAX_TRACKED_ADDRESSES`].
    shared: Bucket,
    /// When full buckets were last dropped from the map (at most once a second: a
    /// crowd of new addresses must not make every failure a pass over the map).
    swept: Instant,
}

impl FailureLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst);
        Self {
            per_second,
            burst,
            buckets: Mutex::new(Failures {
                by_address: HashMap::new(),
                shared: Bucket::full(burst, Instant::now()),
                swept: Instant::now(),
            }),
        }
    }

    /// Charges one failure to `ip`; `Err(wait)` once it is over its budget.
    pub fn charge(&self, ip: IpAddr) -> Result<(), Duration> {
        self.charge_at(ip, Instant::now())
    }

    fn charge_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let (per_second, burst) = (self.per_second, self.burst);
        let ip = sender(ip);
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Failures {
            by_address: map,
            shared,
            swept,
        } = &mut *guard;
        if !map.contains_key(&ip)
            && map.len() >= MAX_TRACKED_ADDRESSES
            && now.saturating_duration_since(*swept) >= Duration::from_secs(1)
        {
            // Full buckets are as good as absent.
            map.retain(|_, b| b.refilled(now, per_second, burst) < burst);
            *swept = now;
        }
        if let Some(b) = map.get_mut(&ip) {
            return b.take(now, per_second, burst);
        }
        if map.len() >= MAX_TRACKED_ADDRESSES {
            return shared.take(now, per_second, burst);
        }
        let mut b = Bucket::full(burst, now);
        let taken = b.take(now, per_second, burst);
        map.insert(ip, b);
        taken
    }

    /// Addresses tracked now (for tests).
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_address
            .len()
    }
}

/// Who a failure is charged to: the address, or for IPv6 its /64 (one host holds a
/// whole /64, and must not get a fresh budget per address in it).
fn sender(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 140.82.112.5, 10.1.1.1".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "140.82.112.5".parse::<IpAddr>().unwrap()
        );
        let direct: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(direct, &h, &trusted), direct);
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        assert!(allowed(
            "140.82.112.5".parse().unwrap(),
            &nets(&["140.82.112.0/20"])
        ));
        assert!(!allowed(
            "1.2.3.4".parse().unwrap(),
            &nets(&["140.82.112.0/20", "192.30.252.1"])
        ));
        assert!(allowed("1.2.3.4".parse().unwrap(), &[]));
    }

    #[test]
    fn token_bucket() {
        let r = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.take_at(t0).is_ok());
        }
        let wait = r.take_at(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(r.take_at(t0 + Duration::from_millis(110)).is_ok());
    }

    #[test]
    fn failures_are_budgeted_per_address_with_a_bounded_map() {
        let f = FailureLimiter::new(1.0, 2);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(f.charge_at(a, t0).is_ok());
        assert!(f.charge_at(a, t0).is_ok());
        assert!(f.charge_at(a, t0).is_err());
        assert!(
            f.charge_at(b, t0).is_ok(),
            "another address has its own budget"
        );
        assert!(f.charge_at(a, t0 + Duration::from_millis(1100)).is_ok());
        // A crowd of addresses: the map stays bounded; past it they share one bucket.
        let f = FailureLimiter::new(1.0, 3);
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 50) {
            let _ = f.charge_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(f.tracked(), MAX_TRACKED_ADDRESSES);
        let late: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(f.charge_at(late, t0).is_err(), "the shared bucket is spent");
        // Once the tracked ones refill, room comes back.
        assert!(f.charge_at(late, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(f.tracked(), 1);
        // An IPv6 host is charged per /64.
        let f = FailureLimiter::new(1.0, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(f.charge_at(a, t0).is_ok());
        assert!(f.charge_at(b, t0).is_ok());
        assert!(f.charge_at(a, t0).is_err(), "same /64, same budget");
    }
}
