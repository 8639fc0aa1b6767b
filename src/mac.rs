//! MAC addresses: the identity of a client everywhere in pxeroot.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a MAC address (write it as 52:54:00:12:34:56 or 52-54-00-12-34-56)")]
pub struct MacParseError {
    pub input: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any case.
    fn from_str(s: &str) -> Result<Mac, MacParseError> {
        let err = || MacParseError { input: s.to_string() };
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl Mac {
    /// The form used in file names: dashes, lower case. (A colon would make
    /// qemu-img read `52:...` as a protocol prefix.)
    pub fn file_stem(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mac_parse_accepts_both_separators_any_case() {
        let a: Mac = "52:54:00:12:34:5F".parse().unwrap();
        let b: Mac = "52-54-00-12-34-5f".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:12:34:5f");
        assert_eq!(a.file_stem(), "52-54-00-12-34-5f");
    }

    #[test]
    fn test_mac_parse_rejects_malformed() {
        for bad in ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "5:54:00:12:34:56", "zz:54:00:12:34:56", "52:54-00:12:34:56", "base"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
