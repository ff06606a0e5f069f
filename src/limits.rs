//! Abuse limits shared by the OAuth endpoints and `/mcp`: who the client is (its
//! address, taking forwarding headers only from trusted proxies) and how often it may
//! try. Counters live in the database so that every instance on one PostgreSQL sees
//! the same totals; `/mcp`, which must not pay a query per request, counts in memory
//! and adds its counts to the shared ones every flush interval.
//!
//! Windows slide: the estimate is the current fixed window's count plus the previous
//! window's, weighted by how much of it still overlaps. That avoids the double burst a
//! plain fixed window allows at its edge, for two rows per counter.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::domain::limit::canonical;
pub use crate::domain::limit::{Rate, TrustedProxies};
use crate::state::AppState;
use crate::storage::{StorageError, Store};

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which
/// case the nearest address in the forwarding chain that is not itself a trusted
/// proxy. Entries further left are whatever the client wrote, so they never count.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("forwarded") {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((k, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for")
                    && let Some(ip) = forwarded_node(v.trim())
                {
                    hops.push(ip);
                }
            }
        }
    }
    if hops.is_empty() {
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else { continue };
            hops.extend(value.split(',').filter_map(|s| forwarded_node(s.trim())));
        }
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let hop = canonical(hop);
        client = hop;
        if !trusted.contains(hop) {
            break;
        }
    }
    client
}

/// An address from `Forwarded: for=` (RFC 7239: maybe quoted, IPv6 in brackets, maybe a
/// port) or from `X-Forwarded-For`.
fn forwarded_node(raw: &str) -> Option<IpAddr> {
    let s = raw.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?;
    inner.split(']').next()?.parse().ok()
}

/// The requesting client's address (see [`client_address`]); the unspecified address
/// when the server was not given connection info (in-process tests and benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Ok(Self(client_address(
            peer,
            &parts.headers,
            &state.config.server.trusted_proxies,
        )))
    }
}

/// Over a limit: try again in this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub retry_after_secs: u64,
}

/// A counter's name in the database. Built from what identifies the subject, hashed
/// where that may be something a person typed (an email field can hold a password).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket(String);

impl Bucket {
    pub fn address(purpose: &str, ip: IpAddr) -> Self {
        Self(format!("{purpose}:ip:{ip}"))
    }

    pub fn account(purpose: &str, email: &str) -> Self {
        let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{purpose}:account:{hex}"))
    }

    pub fn client(purpose: &str, client_id: &str) -> Self {
        let digest = Sha256::digest(client_id.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{purpose}:client:{hex}"))
    }

    pub fn credential(digest: &str) -> Self {
        Self(format!(
            "mcp:credential:{}",
            &digest[..digest.len().min(32)]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Counts in the current and previous fixed windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub previous: i64,
    pub current: i64,
    /// When the last event was counted (unix seconds; 0 when none).
    pub last_at: i64,
}

pub fn window_start(now: i64, rate: Rate) -> i64 {
    now - now.rem_euclid(rate.window_secs)
}

impl Counts {
    /// Events within the last window, counting the previous fixed window by its overlap.
    pub fn estimate(&self, now: i64, rate: Rate) -> f64 {
        let elapsed = (now - window_start(now, rate)) as f64 / rate.window_secs as f64;
        self.previous as f64 * (1.0 - elapsed) + self.current as f64
    }

    /// `Err` when the estimate has reached the limit, with the wait until it falls below.
    pub fn check(&self, now: i64, rate: Rate) -> Result<(), Exceeded> {
        let max = f64::from(rate.max);
        if self.estimate(now, rate) < max {
            return Ok(());
        }
        let w = rate.window_secs as f64;
        let elapsed = (now - window_start(now, rate)) as f64;
        let (prev, cur) = (self.previous as f64, self.current as f64);
        let wait = if cur < max && prev > 0.0 {
            // Within this window, as the previous one's weight shrinks.
            w * (1.0 - (max - cur) / prev) - elapsed
        } else {
            // Into the next window, as this one's weight shrinks.
            (w - elapsed) + w * (1.0 - max / cur.max(1.0))
        };
        // The estimate must fall strictly below the limit: one second past the exact point.
        Err(Exceeded {
            retry_after_secs: (wait.floor() + 1.0).max(1.0) as u64,
        })
    }

    /// As [`Counts::check`], and beyond a third of the limit each further attempt must
    /// wait twice as long after the last one as the attempt before (2 s, 4 s, 8 s …):
    /// the progressive delay of sign-in, ending in lock-out at the limit.
    pub fn check_progressive(&self, now: i64, rate: Rate) -> Result<(), Exceeded> {
        self.check(now, rate)?;
        let free = (f64::from(rate.max) / 3.0).ceil().max(1.0);
        let seen = self.estimate(now, rate).floor();
        if seen < free {
            return Ok(());
        }
        let gap = 2f64.powf(seen - free + 1.0).min(rate.window_secs as f64) as i64;
        let since = now - self.last_at;
        if since < gap {
            return Err(Exceeded {
                retry_after_secs: (gap - since).max(1) as u64,
            });
        }
        Ok(())
    }
}

/// Reads a counter without counting.
pub async fn counts(
    store: &Store,
    bucket: &Bucket,
    rate: Rate,
    now: i64,
) -> Result<Counts, StorageError> {
    store
        .rate_counts(bucket.as_str(), window_start(now, rate), rate.window_secs)
        .await
}

/// Whether one more event fits, without counting it (for limits on failures).
pub async fn check(
    store: &Store,
    bucket: &Bucket,
    rate: Option<Rate>,
    now: i64,
) -> Result<Result<(), Exceeded>, StorageError> {
    let Some(rate) = rate else { return Ok(Ok(())) };
    Ok(counts(store, bucket, rate, now).await?.check(now, rate))
}

/// Counts one event.
pub async fn count(
    store: &Store,
    bucket: &Bucket,
    rate: Option<Rate>,
    now: i64,
) -> Result<(), StorageError> {
    let Some(rate) = rate else { return Ok(()) };
    store
        .rate_add(bucket.as_str(), window_start(now, rate), 1, now)
        .await
        .map(|_| ())
}

/// Per-credential request counts for `/mcp`, kept in memory so a request costs no query;
/// [`LocalCounter::sync`] adds them to the shared counters and reads back what every
/// instance counted, so the limit holds across instances to within a flush interval.
#[derive(Default)]
pub struct LocalCounter {
    entries: Mutex<HashMap<Bucket, Local>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Local {
    window: i64,
    /// Counted here in `window`, in total.
    mine: i64,
    /// Of `mine`, already added to the shared counter.
    flushed: i64,
    /// The shared counter's value for `window` when last read (includes `flushed`).
    shared: i64,
    /// The previous window's final shared value.
    previous: i64,
}

impl LocalCounter {
    /// Counts a request, refusing it when the estimate has reached the limit (refused
    /// requests are not counted, so a client that backs off gets back in).
    pub fn hit(&self, bucket: &Bucket, rate: Rate, now: i64) -> Result<(), Exceeded> {
        let window = window_start(now, rate);
        let Ok(mut entries) = self.entries.lock() else {
            return Ok(());
        };
        // Looked up before inserting, so a known bucket costs no allocation.
        if !entries.contains_key(bucket) {
            entries.insert(bucket.clone(), Local::default());
        }
        let Some(e) = entries.get_mut(bucket) else {
            return Ok(());
        };
        if e.window != window {
            let total = e.shared + (e.mine - e.flushed);
            *e = Local {
                window,
                previous: if e.window == window - rate.window_secs {
                    total
                } else {
                    0
                },
                ..Local::default()
            };
        }
        let counts = Counts {
            previous: e.previous,
            current: e.shared + (e.mine - e.flushed),
            last_at: now,
        };
        counts.check(now, rate)?;
        e.mine += 1;
        Ok(())
    }

    /// Adds what was counted here since the last sync to the shared counters, learns the
    /// totals, and forgets counters of windows that no longer matter.
    pub async fn sync(&self, store: &Store, rate: Rate, now: i64) -> Result<(), StorageError> {
        let window = window_start(now, rate);
        let pending: Vec<(String, i64, i64)> = match self.entries.lock() {
            Ok(mut entries) => {
                entries.retain(|_, e| e.window >= window - rate.window_secs);
                entries
                    .iter()
                    .filter(|(_, e)| e.mine > e.flushed)
                    .map(|(b, e)| (b.0.clone(), e.window, e.mine - e.flushed))
                    .collect()
            }
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let totals = store.rate_add_many(&pending, now).await?;
        let added: HashMap<(&str, i64), i64> = pending
            .iter()
            .map(|(b, w, delta)| ((b.as_str(), *w), *delta))
            .collect();
        if let Ok(mut entries) = self.entries.lock() {
            for (bucket, w, total) in totals {
                let key = Bucket(bucket);
                if let Some(e) = entries.get_mut(&key)
                    && e.window == w
                    && let Some(delta) = added.get(&(key.as_str(), w))
                {
                    e.flushed += delta;
                    e.shared = total;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_say_why() {
        assert_eq!(
            Rate::parse("10/minute").unwrap(),
            Some(Rate {
                max: 10,
                window_secs: 60
            })
        );
        assert_eq!(
            Rate::parse("5/15m").unwrap(),
            Some(Rate {
                max: 5,
                window_secs: 900
            })
        );
        assert_eq!(
            Rate::parse("100/day").unwrap(),
            Some(Rate {
                max: 100,
                window_secs: 86_400
            })
        );
        assert_eq!(Rate::parse(" off ").unwrap(), None);
        for bad in [
            "",
            "10",
            "ten/minute",
            "10/fortnight",
            "0/minute",
            "10/0s",
            "10/2d",
            "-1/h",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let peer: IpAddr = "198.51.100.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.1")]);
        assert_eq!(client_address(peer, &h, &none), peer);

        let proxy = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        // The client prepended a fake entry; the proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7")]);
        assert_eq!(
            client_address(lb, &h, &proxy),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // Two trusted hops, then the client.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.9.9.9")]);
        assert_eq!(
            client_address(lb, &h, &proxy),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // RFC 7239 wins over X-Forwarded-For, with quoting, brackets and ports.
        let h = headers(&[
            (
                "forwarded",
                "for=1.2.3.4, for=\"[2001:db8::7]:4711\";proto=https",
            ),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        assert_eq!(
            client_address(lb, &h, &proxy),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        // A trusted proxy that sent no header is the client as far as we can tell.
        assert_eq!(client_address(lb, &HeaderMap::new(), &proxy), lb);
        // IPv4-mapped peers are matched as IPv4.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.8")]);
        assert_eq!(
            client_address(mapped, &h, &proxy),
            "203.0.113.8".parse::<IpAddr>().unwrap()
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("example.com").is_err());
    }

    #[test]
    fn sliding_estimate_and_retry_after() {
        let rate = Rate {
            max: 10,
            window_secs: 60,
        };
        // 30 s into a window after a full previous one: half of it still counts.
        let now = 6_000 + 30;
        let c = Counts {
            previous: 10,
            current: 4,
            last_at: now,
        };
        assert!((c.estimate(now, rate) - 9.0).abs() < 1e-9);
        assert!(c.check(now, rate).is_ok());
        let c = Counts {
            previous: 10,
            current: 5,
            last_at: now,
        };
        // 10·(1 − t/60) + 5 < 10 once t > 30: 1 s from now (ceil of just over 0).
        assert_eq!(
            c.check(now, rate),
            Err(Exceeded {
                retry_after_secs: 1
            })
        );
        let c = Counts {
            previous: 0,
            current: 10,
            last_at: now,
        };
        // Full this window: 30 s to its end, then the weight must drop below 1.
        assert_eq!(
            c.check(now, rate),
            Err(Exceeded {
                retry_after_secs: 31
            })
        );
        let slid = Counts {
            previous: 10,
            current: 0,
            last_at: now,
        };
        assert!(slid.check(now + 31, rate).is_ok());
        assert!(slid.check(now + 30, rate).is_err());
    }

    #[test]
    fn progressive_delay_doubles_then_locks() {
        let rate = Rate {
            max: 9,
            window_secs: 900,
        };
        let start = 9_000;
        let at = |failures: i64, since: i64| {
            Counts {
                previous: 0,
                current: failures,
                last_at: start,
            }
            .check_progressive(start + since, rate)
        };
        assert!(at(2, 0).is_ok());
        assert_eq!(
            at(3, 0),
            Err(Exceeded {
                retry_after_secs: 2
            })
        );
        assert!(at(3, 2).is_ok());
        assert_eq!(
            at(4, 1),
            Err(Exceeded {
                retry_after_secs: 3
            })
        );
        assert!(at(8, 64).is_ok());
        assert!(at(9, 100).is_err());
    }

    #[test]
    fn buckets_do_not_hold_what_was_typed() {
        let b = Bucket::account("sign_in", "  Alice@Example.com ");
        assert_eq!(b, Bucket::account("sign_in", "alice@example.com"));
        assert!(!b.as_str().contains("alice"));
    }
}
