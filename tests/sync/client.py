#!/usr/bin/env python3
"""An independent client of automerge-repo's WebSocket network protocol (protocol "1").

tests/sync.rs runs it as a subprocess against Concord's `GET /v1/sync`, so the server
is checked by code that shares nothing with it: the CBOR framing, the join/peer
handshake, base58check document ids and the automerge sync loop are all done here,
on top of the `automerge` (Python bindings of automerge-rs), `cbor2` and `websockets`
packages that .ci/setup.sh installs into .tools/venv.

Usage (with .tools/venv/bin/python): client.py COMMAND [options]. One JSON object is
printed on stdout, diagnostics go to stderr; exit 0 on success, 1 on failure.
  create --json OBJ [--text-key K --text S]   a new document, saved to --store, then synced
  sync [--doc URL] [--until-key K --until-value JSON] [--stay S] [--say HEX]   syncs the --store copy
      (or, with no store yet, asks for --doc); prints doc_id, doc, heads, unavailable,
      in_sync (the server's last reported heads equal ours), server_heads, ephemeral (the
      ephemeral messages received: sender and data); --say sends one
  edit [--set K=JSON] [--insert K POS TEXT] [--delete K POS COUNT]   offline, one change,
      the edits applied in command-line order
  show                                         the --store copy
  raw [--join] [--frame-hex H] [--text-frame S] [--cbor-json OBJ] [--big N] [--wait S]
      sends frames in command-line order, then reads until the server closes or S seconds
      (5) pass; --big N sends a well-formed CBOR sync message of exactly N bytes (N zeros
      when too small); in --cbor-json the strings "$PEER" and "$SERVER" become the peer
      ids and a string "hex:..." a byte string
Common: --url ws://.../v1/sync, --token T (Authorization: Bearer T), --store FILE (the
automerge save of one document; FILE.id holds its id), --peer-id ID, --timeout SECONDS.
Document ids may be given as automerge:ID or ID. Text positions count Unicode code points.
"""
import argparse, asyncio, contextlib, datetime, hashlib, json, os, secrets, sys, time

import cbor2
from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
URL_PREFIX = "automerge:"


class Fail(Exception):
    """A failure to report on stderr, exiting 1."""


def log(*parts):
    print("client.py:", *parts, file=sys.stderr, flush=True)


# --- document ids: base58check of 16 bytes -----------------------------------------

def checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def b58check_encode(payload: bytes) -> str:
    data = payload + checksum(payload)
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, digit = divmod(n, 58)
        out = ALPHABET[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b58check_decode(text: str) -> bytes:
    n = 0
    for ch in text:
        if ch not in ALPHABET:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + ALPHABET.index(ch)
    data = b"\0" * (len(text) - len(text.lstrip("1"))) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(data) < 4 or checksum(data[:-4]) != data[-4:]:
        raise ValueError("bad base58check checksum")
    return data[:-4]


def parse_doc_id(text: str) -> str:
    """Accepts `automerge:ID` or a bare ID; returns the bare ID (as sent on the wire)."""
    bare = text.strip().removeprefix(URL_PREFIX)
    try:
        if len(b58check_decode(bare)) != 16:
            raise ValueError("not 16 bytes")
    except ValueError as e:
        raise Fail(f"bad document id {text!r}: {e}")
    return bare


# --- automerge documents ----------------------------------------------------------

def to_json(doc, obj=ROOT):
    kind = doc.object_type(obj)
    if kind == ObjType.Text:
        return doc.text(obj)
    if kind == ObjType.Map:
        return {k: value_json(doc, doc.get(obj, k)) for k in doc.keys(obj)}
    return [value_json(doc, doc.get(obj, i)) for i in range(doc.length(obj))]


def value_json(doc, got):
    value, obj_id = got
    if isinstance(value, ObjType):
        return to_json(doc, obj_id)
    kind, v = value
    if kind in (ScalarType.Bytes, ScalarType.Unknown):
        return bytes(v).hex()  # the bindings hand bytes back as a list of ints
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    return v  # str, int (also uint and counter), float, bool, None


def heads_hex(doc):
    return sorted(h.hex() for h in doc.get_heads())


def scalar_type(value):
    if isinstance(value, bool):  # before int: bool is an int in Python
        return ScalarType.Boolean
    for py, kind in ((str, ScalarType.Str), (int, ScalarType.Int), (float, ScalarType.F64)):
        if isinstance(value, py):
            return kind
    if value is None:
        return ScalarType.Null
    raise Fail(f"unsupported value {value!r}")


def write(tx, obj, prop, value, insert=False):
    """Puts (or, in a list, inserts) a JSON value: dicts become maps, lists lists."""
    if isinstance(value, (dict, list)):
        kind = ObjType.Map if isinstance(value, dict) else ObjType.List
        child = (tx.insert_object if insert else tx.put_object)(obj, prop, kind)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            write(tx, child, k, v, insert=isinstance(value, list))
    else:
        (tx.insert if insert else tx.put)(obj, prop, scalar_type(value), value)


def text_object(tx, key, create):
    got = tx.get(ROOT, key)
    if got is None and create:
        return tx.put_object(ROOT, key, ObjType.Text)
    if got is None or got[0] != ObjType.Text:
        raise Fail(f"root key {key!r} is not a text object")
    return got[1]


def splice(tx, text, pos, delete, insert):
    # Checked here: the bindings silently ignore a delete past the end.
    if pos < 0 or delete < 0 or pos + delete > tx.length(text):
        raise Fail(f"position {pos}+{delete} is outside the text")
    for _ in range(delete):
        tx.delete(text, pos)
    for i, ch in enumerate(insert):  # one element per code point (no splice_text here)
        tx.insert(text, pos + i, ScalarType.Str, ch)


def load_store(path):
    if not os.path.exists(path):
        return None, None
    with open(path, "rb") as f:
        doc = Document.load(f.read()) if os.path.getsize(path) else Document()
    doc_id = None
    if os.path.exists(path + ".id"):
        with open(path + ".id") as f:
            doc_id = parse_doc_id(f.read())
    return doc, doc_id


def save_store(path, doc, doc_id):
    for name, data in ((path, doc.save()), (path + ".id", (URL_PREFIX + doc_id + "\n").encode())):
        with open(name + ".tmp", "wb") as f:
            f.write(data)
        os.replace(name + ".tmp", name)


# --- the wire ---------------------------------------------------------------------

def jsonable(x):
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).hex()
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)


def sync_message_heads(data: bytes):
    """The sender's heads: the first field of an automerge sync message (after its type)."""
    if not data or data[0] not in (0x42, 0x43):
        raise ValueError("not an automerge sync message")
    count, shift, pos = 0, 0, 1
    while True:  # unsigned LEB128
        count |= (data[pos] & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if not data[pos - 1] & 0x80:
            break
    return sorted(data[pos + 32 * i : pos + 32 * i + 32].hex() for i in range(count))


def connect_ws(args):
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    return connect(args.url, additional_headers=headers, max_size=64 << 20, proxy=None,
                   compression=None, ping_interval=None, open_timeout=args.timeout,
                   close_timeout=2)


@contextlib.asynccontextmanager
async def open_ws(args):
    ws = await connect_ws(args)
    try:
        yield ws
    finally:
        try:
            await ws.close()
        except Exception as e:  # websockets 17.4 raises AttributeError here when the server
            log("while closing:", repr(e))  # dropped us while a big frame was being written


class Peer:
    def __init__(self, ws, peer_id):
        self.ws, self.me, self.server = ws, peer_id, None

    async def send(self, msg):
        log("send", msg["type"], f"{len(msg.get('data', b''))} bytes" if "data" in msg else "")
        await self.ws.send(cbor2.dumps(msg))

    async def recv(self, timeout):
        """The next message as a dict, or None after `timeout` seconds of silence."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), max(timeout, 0))
        except TimeoutError:
            return None
        if isinstance(frame, str):
            raise Fail(f"server sent a text frame: {frame[:200]!r}")
        try:
            msg = cbor2.loads(frame)
        except Exception as e:
            raise Fail(f"server sent a frame that is not CBOR ({e}): {frame[:64].hex()}")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise Fail(f"server sent a message without a type: {jsonable(msg)}")
        log("recv", msg["type"], f"{len(msg['data'])} bytes" if isinstance(msg.get("data"), bytes) else "")
        if msg["type"] == "error":
            raise Fail(f"server sent an error: {msg.get('message')!r}")
        return msg

    async def join(self, deadline):
        await self.send({"type": "join", "senderId": self.me, "supportedProtocolVersions": ["1"],
                         "peerMetadata": {"isEphemeral": False}})
        msg = await self.recv(deadline - time.monotonic())
        if msg is None or msg["type"] != "peer":
            raise Fail(f"expected a peer message, got {jsonable(msg)}")
        if msg.get("selectedProtocolVersion") != "1" or msg.get("targetId") != self.me:
            raise Fail(f"bad peer message: {jsonable(msg)}")
        self.server = msg["senderId"]
        return msg


async def sync_doc(args, doc, doc_id, until=None, stay=0.0, say=None):
    """Syncs `doc` with the server until the heads it last reported equal ours (or, should
    they never, until the server has answered and 1 s passes with nothing sent or
    received), and until root[until[0]] == until[1]; then listens `stay` more seconds
    and waits to be in sync again. `say`: bytes sent once as an ephemeral message after
    the first sync message. Returns what the JSON report adds (with the data of the
    ephemeral messages received, in hex)."""
    deadline = time.monotonic() + args.timeout + stay
    try:
        async with open_ws(args) as ws:
            peer = Peer(ws, args.peer_id)
            await peer.join(deadline)
            state, kind = SyncState(), ("sync" if doc.get_heads() else "request")
            server_heads, heard, unavailable, quiet_since, stay_until = None, False, False, 0.0, None
            ephemeral = []

            async def flush():
                nonlocal kind, quiet_since
                while (m := doc.generate_sync_message(state)) is not None:
                    await peer.send({"type": kind, "senderId": peer.me, "targetId": peer.server,
                                     "documentId": doc_id, "data": m.encode()})
                    kind, quiet_since = "sync", time.monotonic()

            await flush()
            if say is not None:
                await peer.send({"type": "ephemeral", "senderId": peer.me, "targetId": peer.server,
                                 "documentId": doc_id, "sessionId": "s-" + peer.me, "count": 1,
                                 "data": say})
            while True:
                now = time.monotonic()
                in_sync = server_heads == heads_hex(doc)
                settled = in_sync or (heard and now - quiet_since >= 1.0) or (unavailable and not doc.get_heads())
                wanted = until is None or to_json(doc).get(until[0]) == until[1]
                if settled and wanted:
                    stay_until = now + stay if stay_until is None else stay_until
                    if now >= stay_until:
                        break
                if now >= deadline:
                    raise Fail(f"timed out (in sync: {in_sync}, heard: {heard}, doc: {json.dumps(to_json(doc))})")
                wait = min(1.0, deadline - now, (stay_until - now) if stay_until and stay_until > now else 1.0)
                try:
                    msg = await peer.recv(wait)
                except ConnectionClosed as e:
                    if settled and wanted:
                        break
                    raise Fail(f"server closed the connection before sync was done: {e}")
                if msg is None:
                    continue
                quiet_since = time.monotonic()
                if msg.get("documentId") not in (None, doc_id):
                    log("ignoring a message for another document", msg.get("documentId"))
                elif msg["type"] in ("sync", "request"):
                    data = msg.get("data")
                    try:
                        doc.receive_sync_message(state, Message.decode(bytes(data)))
                        server_heads = sync_message_heads(bytes(data))
                    except Exception as e:
                        raise Fail(f"bad sync data from the server: {e}")
                    heard, unavailable = True, False
                    await flush()
                elif msg["type"] == "doc-unavailable":
                    heard, unavailable = True, True
                elif msg["type"] == "ephemeral":
                    ephemeral.append({"from": msg.get("senderId"), "data": bytes(msg.get("data", b"")).hex()})
                else:
                    log("ignoring", msg["type"])
            return {"unavailable": unavailable, "in_sync": server_heads == heads_hex(doc),
                    "server_heads": server_heads, "peer_id": peer.me, "server_id": peer.server,
                    "ephemeral": ephemeral}
    except InvalidStatus as e:
        raise Fail(f"WebSocket upgrade refused: HTTP {e.response.status_code}")
    except (OSError, ConnectionClosed, TimeoutError) as e:
        raise Fail(f"connection failed: {e!r}")


def report(doc, doc_id, **extra):
    return {"doc_id": URL_PREFIX + doc_id, "doc": to_json(doc), "heads": heads_hex(doc), **extra}


# --- commands ---------------------------------------------------------------------

async def cmd_create(args):
    if os.path.exists(args.store):
        raise Fail(f"{args.store} exists already")
    fields = json.loads(args.json)
    if not isinstance(fields, dict):
        raise Fail("--json must be an object")
    doc, doc_id = Document(), b58check_encode(secrets.token_bytes(16))
    with doc.transaction() as tx:
        for k, v in fields.items():
            write(tx, ROOT, k, v)
        if args.text_key:
            splice(tx, text_object(tx, args.text_key, create=True), 0, 0, args.text or "")
    save_store(args.store, doc, doc_id)
    result = await sync_doc(args, doc, doc_id)
    save_store(args.store, doc, doc_id)
    if result["unavailable"]:
        raise Fail("the server answered doc-unavailable to a document we created")
    return report(doc, doc_id, **result)


async def cmd_sync(args):
    doc, doc_id = load_store(args.store)
    if args.doc:
        wanted = parse_doc_id(args.doc)
        if doc_id not in (None, wanted):
            raise Fail(f"{args.store} holds {doc_id}, not {wanted}")
        doc_id = wanted
    if doc_id is None:
        raise Fail("no --doc given and no store id to sync")
    doc = doc or Document()
    until = None
    if args.until_key is not None:
        until = (args.until_key, json.loads(args.until_value))
    say = bytes.fromhex(args.say) if args.say else None
    result = await sync_doc(args, doc, doc_id, until, args.stay, say)
    save_store(args.store, doc, doc_id)
    return report(doc, doc_id, **result)


def cmd_edit(args):
    doc, doc_id = load_store(args.store)
    if doc is None:
        raise Fail(f"no store at {args.store}")
    with doc.transaction() as tx:
        for op, values in args.ops:
            if op == "set":
                key, sep, value = values.partition("=")
                if not sep:
                    raise Fail(f"--set wants K=JSON, got {values!r}")
                write(tx, ROOT, key, json.loads(value))
            elif op == "insert":
                splice(tx, text_object(tx, values[0], create=True), int(values[1]), 0, values[2])
            else:
                splice(tx, text_object(tx, values[0], create=False), int(values[1]), int(values[2]), "")
    save_store(args.store, doc, doc_id)
    return report(doc, doc_id)


def cmd_show(args):
    doc, doc_id = load_store(args.store)
    if doc is None:
        raise Fail(f"no store at {args.store}")
    return report(doc, doc_id) if doc_id else {"doc": to_json(doc), "heads": heads_hex(doc)}


def from_json(x, peer):
    if isinstance(x, dict):
        return {k: from_json(v, peer) for k, v in x.items()}
    if isinstance(x, list):
        return [from_json(v, peer) for v in x]
    if isinstance(x, str) and x.startswith("hex:"):
        return bytes.fromhex(x[4:])
    return {"$PEER": peer.me, "$SERVER": peer.server}.get(x, x) if isinstance(x, str) else x


def big_frame(n, peer):
    """A well-formed CBOR sync message of exactly n bytes where possible, else n zeros."""
    def frame(k):
        return cbor2.dumps({"type": "sync", "senderId": peer.me, "targetId": peer.server or "server",
                            "documentId": b58check_encode(bytes(16)), "data": bytes(k)})
    k = max(n - len(frame(0)), 0)
    for _ in range(4):
        k = max(k - (len(frame(k)) - n), 0)
    return frame(k) if len(frame(k)) == n else bytes(n)


async def cmd_raw(args):
    received, closed, code, reason = [], False, None, None
    try:
        async with open_ws(args) as ws:
            peer = Peer(ws, args.peer_id)

            def keep(frame):
                if isinstance(frame, str):
                    return received.append({"text": frame})
                try:
                    received.append(jsonable(cbor2.loads(frame)))
                except Exception:
                    received.append({"undecodable": frame.hex()})

            try:
                if args.join:
                    await peer.send({"type": "join", "senderId": peer.me, "supportedProtocolVersions": ["1"],
                                     "peerMetadata": {"isEphemeral": False}})
                    try:
                        keep(await asyncio.wait_for(ws.recv(), args.wait))
                        peer.server = received[-1].get("senderId") if isinstance(received[-1], dict) else None
                    except TimeoutError:
                        log("no answer to join")
                for kind, value in args.frames:
                    frame = {"hex": lambda: bytes.fromhex(value), "text": lambda: value,
                             "cbor": lambda: cbor2.dumps(from_json(json.loads(value), peer)),
                             "big": lambda: big_frame(int(value), peer)}[kind]()
                    log("send", kind, len(frame), "bytes" if isinstance(frame, bytes) else "chars")
                    await ws.send(frame)
            except ConnectionClosed:
                log("the connection closed while sending")
            end = time.monotonic() + args.wait
            try:  # what the server sent before closing is still delivered, then ConnectionClosed
                while True:
                    keep(await asyncio.wait_for(ws.recv(), end - time.monotonic()))
            except TimeoutError:
                pass
            except ConnectionClosed:
                closed, code, reason = True, ws.close_code, ws.close_reason
    except InvalidStatus as e:
        return {"received": [], "closed": True, "close_code": None, "http_status": e.response.status_code}
    except OSError as e:
        raise Fail(f"connection failed: {e!r}")
    return {"received": received, "closed": closed, "close_code": code, "close_reason": reason}


# --- command line -----------------------------------------------------------------

class Ordered(argparse.Action):
    """Collects repeated options into one list of (kind, value), in command-line order."""
    def __call__(self, parser, ns, values, option_string=None):
        if self.const in ("insert", "delete"):
            values = values.split("\0")
            if len(values) != 3:
                parser.error(f"--{self.const} wants three values")
        getattr(ns, self.dest).append((self.const, values))


def parse_args(argv):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url")
    common.add_argument("--token")
    common.add_argument("--store")
    common.add_argument("--peer-id", default="py-" + secrets.token_hex(6))
    common.add_argument("--timeout", type=float, default=20.0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("create", parents=[common])
    p.add_argument("--json", default="{}")
    p.add_argument("--text-key")
    p.add_argument("--text")
    p = commands.add_parser("sync", parents=[common])
    p.add_argument("--doc")
    p.add_argument("--until-key")
    p.add_argument("--until-value")
    p.add_argument("--stay", type=float, default=0.0)
    p.add_argument("--say", metavar="HEX", help="send these bytes once as an ephemeral message")
    p = commands.add_parser("edit", parents=[common])
    p.set_defaults(ops=[])
    p.add_argument("--set", dest="ops", action=Ordered, const="set", metavar="K=JSON")
    p.add_argument("--insert", dest="ops", action=Ordered, const="insert", metavar="K POS TEXT")
    p.add_argument("--delete", dest="ops", action=Ordered, const="delete", metavar="K POS COUNT")
    commands.add_parser("show", parents=[common])
    p = commands.add_parser("raw", parents=[common])
    p.set_defaults(frames=[])
    p.add_argument("--join", action="store_true")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to read after sending")
    for flag, kind in (("--frame-hex", "hex"), ("--text-frame", "text"), ("--cbor-json", "cbor"), ("--big", "big")):
        p.add_argument(flag, dest="frames", action=Ordered, const=kind)
    glued, argv = [], list(sys.argv[1:] if argv is None else argv)
    while argv:  # "--insert K POS TEXT" -> "--insert=K\0POS\0TEXT", so TEXT may start with "-"
        arg = argv.pop(0)
        glued.append(arg if arg not in ("--insert", "--delete") or len(argv) < 3
                     else arg + "=" + "\0".join(argv.pop(0) for _ in range(3)))
    args = parser.parse_args(glued)
    needs = {"create": ("url", "store"), "sync": ("url", "store"), "edit": ("store",),
             "show": ("store",), "raw": ("url",)}[args.command]
    for name in needs:
        if not getattr(args, name):
            parser.error(f"{args.command} needs --{name}")
    if args.command == "sync" and (args.until_key is None) != (args.until_value is None):
        parser.error("--until-key and --until-value go together")
    return args


def main(argv=None):
    args = parse_args(argv)
    run = {"create": cmd_create, "sync": cmd_sync, "edit": cmd_edit, "show": cmd_show, "raw": cmd_raw}
    try:
        result = run[args.command](args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except (Fail, ValueError) as e:  # ValueError: bad JSON or numbers on the command line
        log("error:", e)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
