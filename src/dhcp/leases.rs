//! Address leases for full-DHCP mode, pure: the clock comes in as seconds
//! since the epoch, persistence is a text form the shell writes and reads.
//!
//! Rules: a reserved MAC always gets its reservation; a MAC keeps the
//! address it had (also after a restart, from the saved table); otherwise
//! the lowest free pool address. An address is never given to two MACs
//! while a lease or offer on it is live. DECLINE quarantines an address
//! (someone else uses it); RELEASE frees it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::mac::Mac;

/// How long an offer holds its address for the client's REQUEST.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a DECLINEd address stays out of the pool (RFC 2131 suggests
/// the server mark it unavailable; an hour lets a conflict clear up).
pub const DECLINE_HOLD_SECS: u64 = 3600;
/// Largest pool we manage (a /16): bounds the search for a free address.
pub const MAX_POOL: u32 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Offered,
    Bound,
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: Option<Mac>,
    pub expires: u64,
    pub state: State,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("no free address in the pool")]
    PoolExhausted,
    #[error("{address} is not {mac}'s to take")]
    NotYours { mac: Mac, address: Ipv4Addr },
    #[error("lease table line {line} is malformed")]
    Malformed { line: usize },
}

#[derive(Debug, Clone)]
pub struct LeaseTable {
    first: u32,
    last: u32,
    lease_secs: u64,
    reservations: BTreeMap<Mac, Ipv4Addr>,
    /// The clients' names from the configuration (option 12), kept with
    /// the reservations: both change at a reload.
    names: BTreeMap<Mac, String>,
    leases: BTreeMap<Ipv4Addr, Lease>,
    /// Counts changes worth saving (bound, declined, released); offers are
    /// seconds long and not saved.
    generation: u64,
}

impl LeaseTable {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr, lease_secs: u64, reservations: BTreeMap<Mac, Ipv4Addr>) -> LeaseTable {
        let (a, b) = (u32::from(first), u32::from(last));
        let last = b.min(a.saturating_add(MAX_POOL - 1));
        LeaseTable { first: a, last, lease_secs, reservations, names: BTreeMap::new(), leases: BTreeMap::new(), generation: 0 }
    }

    fn live(&self, ip: Ipv4Addr, now: u64) -> Option<&Lease> {
        self.leases.get(&ip).filter(|l| l.expires > now)
    }

    fn reserved_for_other(&self, ip: Ipv4Addr, mac: Mac) -> bool {
        self.reservations.iter().any(|(m, a)| *a == ip && *m != mac)
    }

    /// Replace the clients' names (option 12; at a start and a reload).
    pub fn set_names(&mut self, names: BTreeMap<Mac, String>) {
        self.names = names;
    }

    /// The name this MAC's client has in the configuration.
    pub fn name(&self, mac: Mac) -> Option<&str> {
        self.names.get(&mac).map(String::as_str)
    }

    /// Replace the reservations (a configuration reload). A lease another
    /// MAC holds on a newly reserved address is refused at its renewal
    /// (NAK), as at a start with that reservation.
    pub fn set_reservations(&mut self, reservations: BTreeMap<Mac, Ipv4Addr>) {
        self.reservations = reservations;
    }

    /// Keep only the leases on this pool's subnet (the lease file holds
    /// every pool's).
    pub fn retain_subnet(&mut self, netmask: Ipv4Addr) {
        let (mask, net) = (u32::from(netmask), self.first & u32::from(netmask));
        self.leases.retain(|ip, _| u32::from(*ip) & mask == net);
    }

    /// The pool's first address.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first)
    }

    /// Changes since creation that `save` would record: compare before and
    /// after a packet to know whether to write the table.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn lease_secs(&self) -> u64 {
        self.lease_secs
    }

    /// The address `mac` should be offered at `now`, held for its REQUEST.
    pub fn offer(&mut self, mac: Mac, now: u64) -> Result<Ipv4Addr, LeaseError> {
        self.offer_with(mac, now, &|_| false)
    }

    /// Like `offer`, where `in_use(m)` says MAC `m` is still using its
    /// address even if its lease expired (a diskless client whose root is
    /// on NBD renews nothing: its address came from iPXE, not a DHCP client).
    pub fn offer_with(&mut self, mac: Mac, now: u64, in_use: &dyn Fn(Mac) -> bool) -> Result<Ipv4Addr, LeaseError> {
        let ip = self.pick(mac, now, in_use)?;
        let keep_bound = matches!(self.live(ip, now), Some(l) if l.mac == Some(mac) && l.state == State::Bound);
        if !keep_bound {
            self.leases.insert(ip, Lease { mac: Some(mac), expires: now + OFFER_HOLD_SECS, state: State::Offered });
        }
        Ok(ip)
    }

    fn pick(&self, mac: Mac, now: u64, in_use: &dyn Fn(Mac) -> bool) -> Result<Ipv4Addr, LeaseError> {
        if let Some(&ip) = self.reservations.get(&mac) {
            return Ok(ip);
        }
        // The address this MAC had (even expired, if nobody took it since).
        if let Some((&ip, _)) =
            self.leases.iter().find(|(ip, l)| l.mac == Some(mac) && l.state != State::Declined && !self.reserved_for_other(**ip, mac))
        {
            return Ok(ip);
        }
        let free = |ip: &Ipv4Addr| self.live(*ip, now).is_none() && !self.reserved_for_other(*ip, mac);
        let mut pool = (self.first..=self.last).map(Ipv4Addr::from);
        // Never-used addresses first; then expired leases of other MACs that
        // are not still using them.
        let still_used = |ip: &Ipv4Addr| matches!(self.leases.get(ip), Some(l) if l.mac.is_some_and(|m| m != mac && in_use(m)));
        pool.clone()
            .find(|ip| free(ip) && !self.is_others(*ip, mac))
            .or_else(|| pool.find(|ip| free(ip) && !still_used(ip)))
            .ok_or(LeaseError::PoolExhausted)
    }

    /// An expired lease still belongs to its MAC until the pool needs it:
    /// prefer truly unused addresses first.
    fn is_others(&self, ip: Ipv4Addr, mac: Mac) -> bool {
        matches!(self.leases.get(&ip), Some(l) if l.mac.is_some() && l.mac != Some(mac) && l.state != State::Declined)
    }

    /// The MAC an address was last leased to (expired or not).
    pub fn owner(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.leases.get(&ip).and_then(|l| l.mac)
    }

    /// REQUEST for `ip`: bind it if it is this MAC's to take.
    pub fn request(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) -> Result<u64, LeaseError> {
        let ok = match self.reservations.get(&mac) {
            Some(&r) => r == ip,
            None => {
                let in_pool = (self.first..=self.last).contains(&u32::from(ip));
                let free_or_ours = match self.live(ip, now) {
                    None => true,
                    Some(l) => l.mac == Some(mac) && l.state != State::Declined,
                };
                in_pool && free_or_ours && !self.reserved_for_other(ip, mac)
            }
        };
        if !ok {
            return Err(LeaseError::NotYours { mac, address: ip });
        }
        // One address per MAC: drop its other leases.
        self.leases.retain(|a, l| *a == ip || l.mac != Some(mac) || l.state == State::Declined);
        let expires = now + self.lease_secs;
        self.leases.insert(ip, Lease { mac: Some(mac), expires, state: State::Bound });
        self.generation += 1;
        Ok(self.lease_secs)
    }

    /// DECLINE: the client found `ip` in use; keep it out of the pool.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) {
        if matches!(self.leases.get(&ip), Some(l) if l.mac == Some(mac)) {
            self.leases.insert(ip, Lease { mac: None, expires: now + DECLINE_HOLD_SECS, state: State::Declined });
            self.generation += 1;
        }
    }

    /// RELEASE: the client gives `ip` back.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) {
        if matches!(self.leases.get(&ip), Some(l) if l.mac == Some(mac)) {
            self.leases.remove(&ip);
            self.generation += 1;
        }
    }

    /// The table as text: one `address mac expires state` per line.
    pub fn save(&self) -> String {
        let mut out = String::from("# pxeroot DHCP leases: address mac expires(unix) state\n");
        for (ip, l) in &self.leases {
            let mac = l.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
            let st = match l.state {
                State::Offered => "offered",
                State::Bound => "bound",
                State::Declined => "declined",
            };
            out.push_str(&format!("{ip} {mac} {} {st}\n", l.expires));
        }
        out
    }

    /// Load a saved table (offers are not kept: they are seconds long).
    pub fn load(&mut self, text: &str) -> Result<(), LeaseError> {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')) {
            let bad = || LeaseError::Malformed { line: i + 1 };
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, mac, expires, state] = f[..] else { return Err(bad()) };
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let mac = if mac == "-" { None } else { Some(mac.parse().map_err(|_| bad())?) };
            let expires = expires.parse().map_err(|_| bad())?;
            let state = match state {
                "bound" => State::Bound,
                "declined" => State::Declined,
                "offered" => continue,
                _ => return Err(bad()),
            };
            self.leases.insert(ip, Lease { mac, expires, state });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn table() -> LeaseTable {
        let mut r = BTreeMap::new();
        r.insert(mac(9), Ipv4Addr::new(10, 0, 0, 50));
        LeaseTable::new(Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 102), 3600, r)
    }

    #[test]
    fn test_two_clients_get_different_addresses_and_keep_them() {
        let mut t = table();
        let a = t.offer(mac(1), 0).unwrap();
        let b = t.offer(mac(2), 0).unwrap();
        assert_ne!(a, b);
        t.request(mac(1), a, 1).unwrap();
        t.request(mac(2), b, 1).unwrap();
        assert_eq!(t.offer(mac(1), 100).unwrap(), a, "a client keeps its address");
        assert!(t.request(mac(1), b, 2).is_err(), "never the same address to two MACs");
        assert_eq!(t.offer(mac(9), 0).unwrap(), Ipv4Addr::new(10, 0, 0, 50), "reservation");
        assert!(t.request(mac(1), Ipv4Addr::new(10, 0, 0, 50), 2).is_err(), "someone else's reservation");
    }

    #[test]
    fn test_pool_exhaustion_expiry_decline_release() {
        let mut t = table();
        for n in 1..=3 {
            let ip = t.offer(mac(n), 0).unwrap();
            t.request(mac(n), ip, 0).unwrap();
        }
        assert_eq!(t.offer(mac(4), 10), Err(LeaseError::PoolExhausted));
        // After expiry the pool frees up (the newcomer takes an expired one)...
        assert!(t.offer(mac(4), 4000).is_ok());
        // ...unless the owners are still running (their NBD sessions open).
        let mut u = table();
        for n in 1..=3 {
            let ip = u.offer(mac(n), 0).unwrap();
            u.request(mac(n), ip, 0).unwrap();
        }
        assert_eq!(u.offer_with(mac(4), 4000, &|_| true), Err(LeaseError::PoolExhausted));
        let mut t = table();
        let ip = t.offer(mac(1), 0).unwrap();
        t.decline(mac(1), ip, 0);
        assert_ne!(t.offer(mac(1), 1).unwrap(), ip, "a declined address is not offered again");
        let ip2 = t.offer(mac(2), 1).unwrap();
        t.request(mac(2), ip2, 1).unwrap();
        t.release(mac(2), ip2);
        assert_eq!(t.offer(mac(3), 2).unwrap(), ip2, "released address is free again");
    }

    #[test]
    fn test_save_load_keeps_bound_leases() {
        let mut t = table();
        let ip = t.offer(mac(1), 0).unwrap();
        t.request(mac(1), ip, 0).unwrap();
        let saved = t.save();
        let mut u = table();
        u.load(&saved).unwrap();
        assert_eq!(u.offer(mac(1), 10).unwrap(), ip, "lease honoured after a restart");
        assert_ne!(u.offer(mac(2), 10).unwrap(), ip);
        assert!(u.load("10.0.0.1 nonsense").is_err());
    }

    /// One lease file for every pool: each pool's table takes back the
    /// leases on its own subnet only.
    #[test]
    fn test_pools_share_one_file_each_keeps_its_subnet() {
        let pool = |net: u8| LeaseTable::new(Ipv4Addr::new(10, net, 0, 100), Ipv4Addr::new(10, net, 0, 110), 3600, BTreeMap::new());
        let (mut a, mut b) = (pool(1), pool(2));
        let (ia, ib) = (a.offer(mac(1), 0).unwrap(), b.offer(mac(2), 0).unwrap());
        a.request(mac(1), ia, 1).unwrap();
        b.request(mac(2), ib, 1).unwrap();
        let text = a.save() + &b.save();
        let mask = Ipv4Addr::new(255, 255, 255, 0);
        let (mut a2, mut b2) = (pool(1), pool(2));
        for t in [&mut a2, &mut b2] {
            t.load(&text).unwrap();
            t.retain_subnet(mask);
        }
        assert_eq!((a2.owner(ia), a2.owner(ib)), (Some(mac(1)), None));
        assert_eq!((b2.owner(ib), b2.owner(ia)), (Some(mac(2)), None));
    }
}
