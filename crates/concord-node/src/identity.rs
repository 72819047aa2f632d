//! Whose changesets a replica accepts: a changeset is applied only when whoever
//! published it may write as its origin.
//!
//! Every node writes its region's log on a subject of its own
//! (`concord.log.<region>.<node>`), and NATS lets each node's credentials publish on
//! that subject only, so a stored message's subject names its publisher. A leader
//! records, before it writes, which node its epoch belongs to (the region's lease
//! history: `owner.<region>.<epoch>` in the `concord_owners` bucket, which only that
//! region's nodes may write, and which the server keeps write-once: a record is never
//! replaced or deleted, not even by a node of the region). A replica looks the changeset's origin up there (in the
//! origin region's domain for another region's log; cached, the history never changes)
//! and takes the changeset only when the publisher is the epoch's owner. Anything else
//! is forged: a follower writing as its leader's epoch, a node writing as an epoch the
//! history does not know. It becomes a dead letter, counted (`concord_forged_total`).
//!
//! A message on the subject of before identities (`concord.log.<region>`, which no
//! node's credentials may publish on any more) is taken as it was. A history that
//! cannot be read now (the origin region cut off) is not a verdict: the entry waits
//! ([`Identity::verdict`] fails, and its stream's reader asks again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_core::changeset::Changeset;
use concord_transport::LogEntry;
use concord_transport::nats::{NatsLog, publisher};

/// Most epochs whose owner is remembered (past it the memory starts over).
const OWNERS_MAX: usize = 4096;
/// How long one look-up of the history may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Identity {
    log: Arc<NatsLog>,
    own_region: String,
    /// (region, epoch) → the owner the history names (`None`: it names none).
    owners: Mutex<HashMap<(String, u64), Option<String>>>,
}

impl Identity {
    pub fn new(log: Arc<NatsLog>, own_region: String) -> Identity {
        Identity { log, own_region, owners: Mutex::new(HashMap::new()) }
    }

    /// `None`: the entry may be applied; `Some(why)`: it is forged. `Err`: the region's
    /// history could not be read now (ask again later).
    pub async fn verdict(&self, region: &str, entry: &LogEntry) -> Result<Option<String>, String> {
        if entry.subject.is_empty() {
            return Ok(None);
        }
        let publisher = match publisher(region, &entry.subject) {
            None => return Ok(Some(format!("published on {}, which is no subject of {region}'s log", entry.subject))),
            Some(None) => return Ok(None),
            Some(Some(node)) => node,
        };
        // What is no changeset of this region, the engine refuses anyway.
        let Some(origin) = Changeset::peek_origin(&entry.payload).filter(|o| o.region.as_str() == region) else {
            return Ok(None);
        };
        match self.owner(region, origin.epoch).await? {
            Some(owner) if owner == publisher => Ok(None),
            Some(owner) => Ok(Some(format!("{publisher} published a changeset of {origin}, whose epoch is {owner}'s"))),
            None => Ok(Some(format!(
                "{publisher} published a changeset of {origin}, an epoch {region}'s lease history does not know"
            ))),
        }
    }

    async fn owner(&self, region: &str, epoch: u64) -> Result<Option<String>, String> {
        let key = (region.to_string(), epoch);
        if let Some(known) = self.owners.lock().expect("not poisoned").get(&key) {
            return Ok(known.clone());
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.log.epoch_owner(&self.own_region, region, epoch))
            .await
            .map_err(|_| format!("{region}'s lease history did not answer within {} s", LOOKUP_TIMEOUT.as_secs()))?
            .map_err(|e| format!("reading {region}'s lease history: {e}"))?;
        let mut owners = self.owners.lock().expect("not poisoned");
        if owners.len() >= OWNERS_MAX {
            owners.clear();
        }
        // An epoch the history does not name yet is asked again next time (a record is
        // written before its epoch writes anything, so a miss is a forgery, or a history
        // read from a lagging copy).
        if found.is_some() {
            owners.insert(key, found.clone());
        }
        Ok(found)
    }
}
