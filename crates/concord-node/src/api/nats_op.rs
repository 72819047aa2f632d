//! The operations of the NATS API, one per endpoint of the `concord` micro service
//! (subject `concord.api.<region>.<name>`). A request's operation is parsed once, from
//! its endpoint's name, and then matched exhaustively; a name that is no operation
//! answers 400 `unknown_operation`.

use concord_api::ErrorCode;

use super::limits::Class;
use crate::error::NodeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    KvPut,
    KvGet,
    KvDel,
    KvList,
    DocApply,
    /// Automerge changes made elsewhere (a sync client's, forwarded by a follower):
    /// each written as it is ([`concord_engine::WriteOp::DocChange`]).
    DocChanges,
    DocGet,
    Status,
    ConflictsList,
    ConflictsGet,
    ConflictsResolve,
}

/// Endpoints only the leader serves (writes), and the ones followers serve (reads;
/// the leader too, while no follower is alive). Every node serves [`Op::Status`].
pub const WRITE_OPS: [Op; 5] = [Op::KvPut, Op::KvDel, Op::DocApply, Op::DocChanges, Op::ConflictsResolve];
pub const READ_OPS: [Op; 5] = [Op::KvGet, Op::KvList, Op::DocGet, Op::ConflictsList, Op::ConflictsGet];

impl Op {
    pub const ALL: [Op; 11] = [
        Op::KvPut,
        Op::KvGet,
        Op::KvDel,
        Op::KvList,
        Op::DocApply,
        Op::DocChanges,
        Op::DocGet,
        Op::Status,
        Op::ConflictsList,
        Op::ConflictsGet,
        Op::ConflictsResolve,
    ];

    /// The endpoint's name (the last tokens of its subject).
    pub const fn name(self) -> &'static str {
        match self {
            Op::KvPut => "kv.put",
            Op::KvGet => "kv.get",
            Op::KvDel => "kv.del",
            Op::KvList => "kv.list",
            Op::DocApply => "doc.apply",
            Op::DocChanges => "doc.changes",
            Op::DocGet => "doc.get",
            Op::Status => "status",
            Op::ConflictsList => "conflicts.list",
            Op::ConflictsGet => "conflicts.get",
            Op::ConflictsResolve => "conflicts.resolve",
        }
    }

    /// The operation named `name`, or 400 `unknown_operation`.
    pub fn parse(name: &str) -> Result<Op, NodeError> {
        Op::ALL.into_iter().find(|op| op.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
            NodeError::bad(
                ErrorCode::UnknownOperation,
                format!("no operation {name:?}; the operations are {}", known.join(", ")),
            )
        })
    }

    /// The operation of a request on `subject`, in the service group `group`.
    pub fn of_subject(group: &str, subject: &str) -> Result<Op, NodeError> {
        let name = subject.strip_prefix(group).and_then(|s| s.strip_prefix('.')).unwrap_or(subject);
        Op::parse(name)
    }

    /// Which limits the operation draws on.
    pub const fn class(self) -> Class {
        match self {
            Op::Status => Class::Operator,
            Op::KvPut
            | Op::KvGet
            | Op::KvDel
            | Op::KvList
            | Op::DocApply
            | Op::DocChanges
            | Op::DocGet
            | Op::ConflictsList
            | Op::ConflictsGet
            | Op::ConflictsResolve => Class::Data,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_parses_from_its_subject_and_nothing_else_does() {
        for op in Op::ALL {
            assert_eq!(Op::parse(op.name()).unwrap(), op);
            assert_eq!(Op::of_subject("concord.api.us-east", &format!("concord.api.us-east.{op}")).unwrap(), op);
        }
        for op in WRITE_OPS.iter().chain(&READ_OPS) {
            assert_ne!(*op, Op::Status, "status is served by every node, apart from these lists");
        }
        assert_eq!(WRITE_OPS.len() + READ_OPS.len() + 1, Op::ALL.len(), "every operation is served by someone");
        for unknown in ["kv.gett", "", "status.x", "concord.api.us-east.kv.get"] {
            let e = Op::parse(unknown).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, ErrorCode::UnknownOperation), "{unknown:?}");
        }
        assert!(Op::of_subject("concord.api.us-east", "concord.api.eu-west.kv.get").is_err());
    }
}
