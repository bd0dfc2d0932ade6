//! Per-source guards applied before a body is read: a sender allow-list by
//! network, and a token-bucket rate limit.

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

/// A token bucket: `per_second` sustained, `burst` at once.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *s;
        let refilled = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.per_second)
            .min(self.burst);
        if refilled >= 1.0 {
            *s = (refilled - 1.0, now);
            Ok(())
        } else {
            *s = (refilled, now);
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
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
}
