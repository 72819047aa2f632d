//! What the clients were told, and what the logs really hold: the truth the final
//! checks compare every replica against.

use std::collections::BTreeMap;

use concord_core::ids::Origin;
use concord_engine::{Ack, WriteError, WriteOp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Queued or in flight.
    Open,
    Acked(Ack),
    Failed(String),
    /// The node crashed before it answered: the write may or may not be in the log.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub op: WriteOp,
    /// The conflict record the write resolves, if any.
    pub resolves: Option<uuid::Uuid>,
    /// For a counter increment: by how much.
    pub inc: u64,
    pub status: Status,
    /// The origin sequence of its change, once an append holding it was stored.
    pub landed: Option<(Origin, u64)>,
}

#[derive(Default)]
pub struct Oracle {
    pub writes: BTreeMap<u64, WriteRecord>,
    next_id: u64,
}

impl Oracle {
    pub fn new_write(&mut self, op: WriteOp, inc: u64, resolves: Option<uuid::Uuid>) -> u64 {
        self.next_id += 1;
        self.writes.insert(self.next_id, WriteRecord { op, resolves, inc, status: Status::Open, landed: None });
        self.next_id
    }

    pub fn op(&self, id: u64) -> &WriteOp {
        &self.writes[&id].op
    }

    pub fn resolves(&self, id: u64) -> Option<uuid::Uuid> {
        self.writes[&id].resolves
    }

    /// The log stored an append holding these writes' changes.
    pub fn landed(&mut self, origin: &Origin, seqs: &[(u64, u64)]) {
        for (id, seq) in seqs {
            let w = self.writes.get_mut(id).expect("a known write");
            w.landed = Some((origin.clone(), *seq));
        }
    }

    /// A reply reached the client. An acknowledged change must have landed, at the
    /// sequence the acknowledgement names.
    pub fn reply(&mut self, id: u64, result: Result<Ack, WriteError>) -> Result<(), String> {
        let w = self.writes.get_mut(&id).expect("a known write");
        if w.status != Status::Open {
            return Err(format!("write {id} answered twice: {:?}, then {result:?}", w.status));
        }
        match result {
            Ok(ack) => {
                if let Some(seq) = ack.seq
                    && w.landed != Some((ack.origin.clone(), seq))
                {
                    return Err(format!(
                        "write {id} acknowledged as {}:{seq} but the log holds {:?}",
                        ack.origin, w.landed
                    ));
                }
                w.status = Status::Acked(ack);
            }
            Err(e) => w.status = Status::Failed(format!("{e:?}")),
        }
        Ok(())
    }

    /// The node holding `ids` crashed before answering them.
    pub fn unknown(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            let w = self.writes.get_mut(&id).expect("a known write");
            if w.status == Status::Open {
                w.status = Status::Unknown;
            }
        }
    }

    pub fn fail(&mut self, id: u64, why: &str) {
        self.writes.get_mut(&id).expect("a known write").status = Status::Failed(why.to_string());
    }

    pub fn acked(&self) -> impl Iterator<Item = (&u64, &WriteRecord, &Ack)> {
        self.writes.iter().filter_map(|(id, w)| match &w.status {
            Status::Acked(ack) => Some((id, w, ack)),
            _ => None,
        })
    }

    pub fn count(&self, pred: impl Fn(&Status) -> bool) -> usize {
        self.writes.values().filter(|w| pred(&w.status)).count()
    }
}
