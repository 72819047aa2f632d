//! automerge-repo's network messages, as its WebSocket adapter frames them
//! (`automerge-repo-network-websocket`, protocol version "1"): each binary WebSocket
//! message is one CBOR map with text keys, its kind in `type`.
//!
//! Decoding is lenient where the protocol's own implementations are (a CBOR `null` or
//! `undefined` is an absent field; unknown message types and fields are ignored) and
//! strict where the server depends on a field (a sync message without its document id
//! or data is malformed).

use ciborium::Value;

/// A message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Join {
        sender: String,
        versions: Vec<String>,
    },
    /// `request` (the client has nothing of the document yet) or `sync`.
    Sync {
        request: bool,
        document: String,
        data: Vec<u8>,
    },
    /// Data for the document's other peers, not stored (presence, cursors): relayed.
    Ephemeral(Ephemeral),
    Leave,
    /// Kinds the server takes no action on (`doc-unavailable`,
    /// `remote-heads-changed`, `remote-subscription-change`, and kinds it does not know).
    Ignored,
}

/// An `ephemeral` message, as relayed: its sender, document, session, count and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Ephemeral {
    pub sender: String,
    pub document: String,
    pub session: Option<String>,
    /// As the sender encoded it (automerge-repo's JavaScript sends a float at times).
    pub count: Option<Value>,
    pub data: Vec<u8>,
}

/// A message to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing<'a> {
    Peer { sender: &'a str, target: &'a str },
    Sync { sender: &'a str, target: &'a str, document: &'a str, data: Vec<u8> },
    DocUnavailable { sender: &'a str, target: &'a str, document: &'a str },
    Ephemeral { target: &'a str, message: &'a Ephemeral },
    Error { message: String },
}

/// Most nesting a message may have (the protocol's messages are two levels deep).
const DEPTH_MAX: usize = 16;

pub fn decode(frame: &[u8]) -> Result<Incoming, String> {
    let value: Value = ciborium::de::from_reader_with_recursion_limit(frame, DEPTH_MAX)
        .map_err(|e| format!("the frame is not one CBOR value: {e}"))?;
    let Value::Map(fields) = value else { return Err("the message is not a CBOR map".into()) };
    let field =
        |name: &str| fields.iter().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v).filter(|v| !v.is_null());
    let text = |name: &str| match field(name) {
        Some(Value::Text(t)) => Ok(Some(t.clone())),
        Some(_) => Err(format!("{name} is not text")),
        None => Ok(None),
    };
    let required = |name: &str| text(name)?.ok_or_else(|| format!("the message has no {name}"));
    let kind = required("type")?;
    Ok(match kind.as_str() {
        "join" => {
            let versions = match field("supportedProtocolVersions") {
                None => Vec::new(),
                Some(Value::Array(vs)) => vs.iter().filter_map(|v| v.as_text().map(String::from)).collect(),
                Some(_) => return Err("supportedProtocolVersions is not an array".into()),
            };
            Incoming::Join { sender: required("senderId")?, versions }
        }
        "request" | "sync" => {
            let data = match field("data") {
                Some(Value::Bytes(b)) => b.clone(),
                Some(_) => return Err("data is not a byte string".into()),
                None => return Err(format!("the {kind} message has no data")),
            };
            Incoming::Sync { request: kind == "request", document: required("documentId")?, data }
        }
        "ephemeral" => {
            let data = match field("data") {
                Some(Value::Bytes(b)) => b.clone(),
                _ => return Err("the ephemeral message has no data".into()),
            };
            let count = field("count").filter(|v| v.is_integer() || v.is_float()).cloned();
            Incoming::Ephemeral(Ephemeral {
                sender: required("senderId")?,
                document: required("documentId")?,
                session: text("sessionId")?,
                count,
                data,
            })
        }
        "leave" => Incoming::Leave,
        _ => Incoming::Ignored,
    })
}

pub fn encode(message: &Outgoing<'_>) -> Vec<u8> {
    let text = |s: &str| Value::Text(s.to_string());
    let mut fields = Vec::new();
    let mut put = |k: &str, v: Value| fields.push((text(k), v));
    match message {
        Outgoing::Peer { sender, target } => {
            put("type", text("peer"));
            put("senderId", text(sender));
            put("targetId", text(target));
            put("selectedProtocolVersion", text("1"));
            put("peerMetadata", Value::Map(vec![(text("isEphemeral"), Value::Bool(false))]));
        }
        Outgoing::Sync { sender, target, document, data } => {
            put("type", text("sync"));
            put("senderId", text(sender));
            put("targetId", text(target));
            put("documentId", text(document));
            put("data", Value::Bytes(data.clone()));
        }
        Outgoing::DocUnavailable { sender, target, document } => {
            put("type", text("doc-unavailable"));
            put("senderId", text(sender));
            put("targetId", text(target));
            put("documentId", text(document));
        }
        Outgoing::Ephemeral { target, message } => {
            put("type", text("ephemeral"));
            put("senderId", text(&message.sender));
            put("targetId", text(target));
            put("documentId", text(&message.document));
            if let Some(session) = &message.session {
                put("sessionId", text(session));
            }
            if let Some(count) = &message.count {
                put("count", count.clone());
            }
            put("data", Value::Bytes(message.data.clone()));
        }
        Outgoing::Error { message } => {
            put("type", text("error"));
            put("message", text(message));
        }
    }
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Value::Map(fields), &mut out).expect("a CBOR value encodes to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(&v, &mut out).unwrap();
        out
    }

    fn map(fields: Vec<(&str, Value)>) -> Vec<u8> {
        cbor(Value::Map(fields.into_iter().map(|(k, v)| (Value::Text(k.into()), v)).collect()))
    }

    #[test]
    fn messages_decode_leniently_and_strictly_where_the_server_needs_a_field() {
        let join = map(vec![
            ("type", Value::Text("join".into())),
            ("senderId", Value::Text("p1".into())),
            ("supportedProtocolVersions", Value::Array(vec![Value::Text("1".into())])),
            ("peerMetadata", Value::Null),
        ]);
        assert_eq!(decode(&join), Ok(Incoming::Join { sender: "p1".into(), versions: vec!["1".into()] }));
        let sync = map(vec![
            ("type", Value::Text("sync".into())),
            ("senderId", Value::Text("p1".into())),
            ("targetId", Value::Text("s".into())),
            ("documentId", Value::Text("abc".into())),
            ("data", Value::Bytes(vec![0x42])),
        ]);
        assert_eq!(decode(&sync), Ok(Incoming::Sync { request: false, document: "abc".into(), data: vec![0x42] }));
        let ephemeral = map(vec![
            ("type", Value::Text("ephemeral".into())),
            ("senderId", Value::Text("p1".into())),
            ("documentId", Value::Text("abc".into())),
            ("count", Value::Float(1.0)),
            ("data", Value::Bytes(vec![7])),
        ]);
        let Ok(Incoming::Ephemeral(e)) = decode(&ephemeral) else { panic!("{:?}", decode(&ephemeral)) };
        assert_eq!((e.count, e.data, e.session), (Some(Value::Float(1.0)), vec![7], None));
        let heads = map(vec![("type", Value::Text("remote-heads-changed".into()))]);
        assert_eq!(decode(&heads), Ok(Incoming::Ignored));

        for bad in [
            vec![0xff],
            cbor(Value::Array(vec![])),
            map(vec![("senderId", Value::Text("p1".into()))]),
            map(vec![("type", Value::Integer(1.into()))]),
            map(vec![("type", Value::Text("sync".into())), ("documentId", Value::Text("abc".into()))]),
            map(vec![
                ("type", Value::Text("request".into())),
                ("documentId", Value::Text("abc".into())),
                ("data", Value::Text("not bytes".into())),
            ]),
        ] {
            assert!(decode(&bad).is_err(), "{bad:02x?}");
        }
        // Nesting past the bound is refused, not followed.
        let mut deep = Value::Null;
        for _ in 0..100 {
            deep = Value::Array(vec![deep]);
        }
        assert!(decode(&cbor(deep)).is_err());
    }

    #[test]
    fn what_the_server_sends_decodes_as_the_protocol_says() {
        let bytes = encode(&Outgoing::Sync { sender: "s", target: "p", document: "abc", data: vec![1, 2] });
        let Value::Map(fields) = ciborium::de::from_reader::<Value, _>(&bytes[..]).unwrap() else { panic!() };
        let get = |k: &str| fields.iter().find(|(f, _)| f.as_text() == Some(k)).map(|(_, v)| v.clone());
        assert_eq!(get("type"), Some(Value::Text("sync".into())));
        assert_eq!(get("data"), Some(Value::Bytes(vec![1, 2])));
        assert_eq!(get("documentId"), Some(Value::Text("abc".into())));
        let peer = encode(&Outgoing::Peer { sender: "s", target: "p" });
        let Value::Map(fields) = ciborium::de::from_reader::<Value, _>(&peer[..]).unwrap() else { panic!() };
        assert!(fields.iter().any(|(k, v)| k.as_text() == Some("selectedProtocolVersion") && v.as_text() == Some("1")));
    }
}
