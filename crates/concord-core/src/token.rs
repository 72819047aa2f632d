//! Session tokens: an applied vector in a compact, header-safe text form.
//!
//! `v1:us-east.3=120,eu-west.1=55` — version prefix, then `origin=seq` pairs in origin
//! order. An empty vector is `v1:`.

use crate::ids::Origin;
use crate::vv::VersionVector;
use crate::{CoreError, CoreResult};

const PREFIX: &str = "v1:";
const TOKEN_ENTRIES_MAX: usize = 10_000;

pub fn encode(vv: &VersionVector) -> String {
    let pairs: Vec<String> = vv.iter().map(|(o, s)| format!("{o}={s}")).collect();
    format!("{PREFIX}{}", pairs.join(","))
}

pub fn decode(token: &str) -> CoreResult<VersionVector> {
    let bad = |why: &str| CoreError::InvalidInput(format!("session token: {why}"));
    let body = token.strip_prefix(PREFIX).ok_or_else(|| bad("expected the prefix v1:"))?;
    let mut vv = VersionVector::new();
    if body.is_empty() {
        return Ok(vv);
    }
    for (i, pair) in body.split(',').enumerate() {
        if i >= TOKEN_ENTRIES_MAX {
            return Err(bad("too many entries"));
        }
        let (origin, seq) = pair.split_once('=').ok_or_else(|| bad("expected origin=seq"))?;
        let origin: Origin = origin.parse()?;
        let seq: u64 = seq.parse().map_err(|_| bad("sequence is not a number"))?;
        vv.observe(&origin, seq);
    }
    Ok(vv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RegionId;

    #[test]
    fn tokens_round_trip() {
        let o = |r: &str, e| Origin::new(RegionId::new(r).unwrap(), e);
        let vv: VersionVector = [(o("us-east", 3), 120), (o("eu-west", 1), 55)].into_iter().collect();
        let t = encode(&vv);
        assert_eq!(t, "v1:eu-west.1=55,us-east.3=120");
        assert_eq!(decode(&t).unwrap(), vv);
        assert_eq!(decode("v1:").unwrap(), VersionVector::new());
        assert!(decode("v2:x.1=1").is_err());
        assert!(decode("v1:us-east.1").is_err());
    }
}
