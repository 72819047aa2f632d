//! Regions and origins.
//!
//! A region name is lowercase ASCII letters, digits and `-` (1..=32 bytes), so it can
//! stand in NATS subjects, stream names, file names and HTTP headers unchanged. An
//! origin is `(region, epoch)`: a new epoch starts at every leader start, so an origin
//! (and the Automerge actor derived from it) is never reused after a crash.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{CoreError, CoreResult};

pub const REGION_BYTES_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionId(String);

impl RegionId {
    pub fn new(name: impl Into<String>) -> CoreResult<Self> {
        let name = name.into();
        let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if name.is_empty() || name.len() > REGION_BYTES_MAX || !valid_chars {
            return Err(CoreError::InvalidInput(format!(
                "region {name:?}: use 1 to {REGION_BYTES_MAX} of a-z, 0-9 and '-'"
            )));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegionId {
    type Error = CoreError;
    fn try_from(s: String) -> CoreResult<Self> {
        Self::new(s)
    }
}

impl From<RegionId> for String {
    fn from(r: RegionId) -> String {
        r.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who originated a change: a region's leader in one epoch. Written `region.epoch`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin {
    pub region: RegionId,
    pub epoch: u64,
}

impl Origin {
    pub fn new(region: RegionId, epoch: u64) -> Self {
        Self { region, epoch }
    }

    /// The Automerge actor of this origin: its text form as bytes, unique per epoch.
    pub fn actor_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.region, self.epoch)
    }
}

impl FromStr for Origin {
    type Err = CoreError;
    fn from_str(s: &str) -> CoreResult<Self> {
        let (region, epoch) = s
            .rsplit_once('.')
            .ok_or_else(|| CoreError::InvalidInput(format!("origin {s:?}: expected region.epoch")))?;
        let epoch =
            epoch.parse().map_err(|_| CoreError::InvalidInput(format!("origin {s:?}: epoch is not a number")))?;
        Ok(Self::new(RegionId::new(region)?, epoch))
    }
}

impl TryFrom<String> for Origin {
    type Error = CoreError;
    fn try_from(s: String) -> CoreResult<Self> {
        s.parse()
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        o.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_are_checked() {
        assert!(RegionId::new("us-east").is_ok());
        assert!(RegionId::new("").is_err());
        assert!(RegionId::new("US").is_err());
        assert!(RegionId::new("a.b").is_err());
        assert!(RegionId::new("x".repeat(33)).is_err());
    }

    #[test]
    fn origins_round_trip_as_text() {
        let o = Origin::new(RegionId::new("eu-west").unwrap(), 7);
        assert_eq!(o.to_string(), "eu-west.7");
        assert_eq!("eu-west.7".parse::<Origin>().unwrap(), o);
        assert!("eu-west".parse::<Origin>().is_err());
        assert!("eu-west.x".parse::<Origin>().is_err());
    }
}
