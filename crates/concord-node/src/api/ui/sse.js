// Server-sent events over fetch(), because EventSource cannot send the token
// (an `Authorization` header): the body is read as a stream and parsed as the HTML
// standard says (lines end with CRLF, LF or CR; `event:`, `data:`, `id:` and `retry:`
// fields, one optional space after the colon; a line starting with `:` is a comment,
// the node's keep-alive; a blank line ends an event; an event without data is not
// dispatched, nor is one the stream ends in the middle of).
//
// Bounded: a line, or an event's data, of more than EVENT_CHARS_MAX characters ends the
// stream (as does a stream silent for IDLE_MS: the node sends a comment every 15 s), and
// follow() reconnects like EventSource does: after a pause that starts at
// RECONNECT_MIN_MS (or the stream's `retry:`) and doubles on every failure to connect,
// up to RECONNECT_MAX_MS, sending `Last-Event-ID` when the stream gave one.

import { api, tokenReady, Unauthorized, REQUEST_TIMEOUT_MS } from "/ui/auth.js";

// The most a line, or an event's data, may hold (UTF-16 code units: 2 MiB of memory each).
export const EVENT_CHARS_MAX = 1 << 20;
// A stream that says nothing for this long is taken as dead.
export const IDLE_MS = 45000;
export const RECONNECT_MIN_MS = 1000;
export const RECONNECT_MAX_MS = 30000;

export class StreamTooLarge extends Error {}

// The events in a stream's text, fed to it piece by piece.
export class EventParser {
  constructor(charsMax = EVENT_CHARS_MAX) {
    this.charsMax = charsMax;
    this.rest = ""; // the start of a line not yet ended
    this.afterCR = false;
    this.type = "";
    this.data = [];
    this.dataChars = 0;
    this.lastEventId = "";
    this.retryMs = null;
  }

  // The events `text` completes, [{ type, data, id }], oldest first. Throws
  // StreamTooLarge when a line or an event's data passes the limit.
  push(text) {
    const events = [];
    // A CR that ended the last piece and the LF that starts this one are one line end.
    if (this.afterCR && text.startsWith("\n")) text = text.slice(1);
    this.afterCR = false;
    const lines = /\r\n|\r|\n/g;
    lines.lastIndex = this.rest.length; // the text kept holds no line end
    const buffer = this.rest + text;
    let start = 0;
    for (let m = lines.exec(buffer); m !== null; m = lines.exec(buffer)) {
      this.line(buffer.slice(start, m.index), events);
      start = m.index + m[0].length;
      this.afterCR = m[0] === "\r" && start === buffer.length;
    }
    this.rest = buffer.slice(start);
    if (this.rest.length > this.charsMax) {
      throw new StreamTooLarge(`a line of more than ${this.charsMax} characters`);
    }
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.data.length) events.push({ type: this.type || "message", data: this.data.join("\n"), id: this.lastEventId });
      this.type = "";
      this.data = [];
      this.dataChars = 0;
      return;
    }
    if (line.startsWith(":")) return; // a comment: the node's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") {
      this.dataChars += value.length + 1;
      if (this.dataChars > this.charsMax) throw new StreamTooLarge(`an event of more than ${this.charsMax} characters`);
      this.data.push(value);
    } else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retryMs = Number(value);
  }
}

// Read `body` to its end, handing every event to `onEvent`; `controller` aborts the
// request when the stream is idle for IDLE_MS or cannot be read.
export async function readEvents(body, parser, controller, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder(); // UTF-8, a leading BOM dropped, bad bytes replaced
  const idle = () => setTimeout(() => controller.abort(new Error(`the stream said nothing for ${IDLE_MS / 1000} s`)), IDLE_MS);
  let timer = idle();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      clearTimeout(timer);
      if (done) return;
      timer = idle();
      for (const event of parser.push(decoder.decode(value, { stream: true }))) onEvent(event);
    }
  } finally {
    clearTimeout(timer);
    controller.abort(); // closes the connection if it is still open
  }
}

const sleep = (ms) => new Promise((wake) => setTimeout(wake, ms));

// Follow the event stream at `path` for as long as the page lives: on.open() each time it
// opens, on.event({ type, data, id }) for every event, on.error(e) each time it ends or
// cannot open. An error thrown by on.event ends the stream too (it reconnects).
export async function follow(path, on) {
  let pauseMs = RECONNECT_MIN_MS;
  let baseMs = RECONNECT_MIN_MS;
  let lastEventId = "";
  for (;;) {
    await tokenReady();
    const controller = new AbortController();
    const parser = new EventParser();
    const connecting = setTimeout(() => controller.abort(new Error(`no answer in ${REQUEST_TIMEOUT_MS / 1000} s`)), REQUEST_TIMEOUT_MS);
    let why;
    let opened = false;
    try {
      const headers = { accept: "text/event-stream" };
      if (lastEventId) headers["last-event-id"] = lastEventId;
      const resp = await api(path, { headers, signal: controller.signal });
      clearTimeout(connecting);
      if (!resp.ok) throw new Error(`GET ${path} answered ${resp.status}`);
      if (!(resp.headers.get("content-type") || "").startsWith("text/event-stream")) {
        throw new Error(`GET ${path} is not an event stream`);
      }
      opened = true;
      on.open();
      await readEvents(resp.body, parser, controller, on.event);
      why = new Error("the node ended the stream");
    } catch (e) {
      why = e;
    } finally {
      clearTimeout(connecting);
      controller.abort();
    }
    if (parser.lastEventId) lastEventId = parser.lastEventId;
    if (parser.retryMs !== null) baseMs = Math.min(RECONNECT_MAX_MS, Math.max(RECONNECT_MIN_MS, parser.retryMs));
    if (opened) pauseMs = baseMs;
    on.error(why);
    // A refused token is no failure of the stream: the next attempt waits for a new one
    // (and, should one have been given meanwhile, goes at the shortest pause).
    if (why instanceof Unauthorized) {
      await sleep(RECONNECT_MIN_MS);
      continue;
    }
    await sleep(pauseMs);
    pauseMs = Math.min(RECONNECT_MAX_MS, pauseMs * 2);
  }
}
