//! What a limit setting says: a rate, and the proxies whose forwarding headers are
//! believed. Parsed from the configuration, used by `limits`; kept here so that the
//! configuration imports nothing above the domain.

use std::net::IpAddr;

use ipnet::IpNet;

/// At most `max` events per sliding `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub max: u32,
    pub window_secs: i64,
}

impl Rate {
    /// `"10/minute"`, `"600/hour"`, `"5/15m"`, `"100/day"`; `"off"` is no limit.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || format!("{raw:?} is not a rate like 10/minute, 600/hour, 5/15m or off");
        let (count, per) = raw.split_once('/').ok_or_else(bad)?;
        let max: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let window_secs = match per {
            "second" | "s" => 1,
            "minute" | "m" => 60,
            "hour" | "h" => 3600,
            "day" | "d" => 86_400,
            _ => {
                let split = per.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
                let (n, unit) = per.split_at(split);
                let n: i64 = n.parse().map_err(|_| bad())?;
                let unit = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86_400,
                    _ => return Err(bad()),
                };
                n * unit
            }
        };
        if max == 0 {
            return Err(format!(
                "{raw:?}: the count must be at least 1 (or say off)"
            ));
        }
        if !(1..=86_400).contains(&window_secs) {
            return Err(format!("{raw:?}: the period must be between 1s and 1d"));
        }
        Ok(Some(Self { max, window_secs }))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}s", self.max, self.window_secs)
    }
}

/// Proxies whose `X-Forwarded-For` / `Forwarded` headers name the real client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Addresses or networks separated by spaces or commas: `10.0.0.0/8, 127.0.0.1`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in raw.split([' ', ',']).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not an address or network like 10.0.0.0/8"))?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `::ffff:10.0.0.1` and `10.0.0.1` are one client.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
