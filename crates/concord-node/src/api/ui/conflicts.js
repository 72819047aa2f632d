// The live conflict feed: the open records of this node's conflict log, each with its
// competing versions side by side, and buttons that resolve it.
//
// Live, and never backwards: the feed subscribes first (GET /v1/conflicts/events, as
// server-sent events, read by sse.js because EventSource cannot send the token), then
// lists (GET /v1/conflicts) once the stream is open, so a record committed in between
// is in one or the other. A record only grows (versions join it, it is resolved once),
// so an older state of one already shown is ignored. When a version joins, the node
// replaces the record with one under a new id: a record whose versions another open
// record of the same key holds is dropped. A `lagged` event (this page was too slow for
// the node's feed) or a reconnect lists again; so does an event too large for the page
// to buffer (sse.js ends the stream on it and reconnects): the listing brings its record.
//
// Resolving posts {"pick": version id} or {"value": typed text} to this node; a node
// that does not take writes answers 307 towards its leader, which this page does not
// follow (it talks to no other origin): it says where to go instead. A read token is
// answered 403: the page says so.

import { el } from "/ui/regions.js";
import { api, Unauthorized } from "/ui/auth.js";
import { follow } from "/ui/sse.js";

const LIST_LIMIT = 200;
const RESOLVED_SHOWN_MAX = 8;
// Records remembered (resolved ones are kept so a stale listing cannot reopen them;
// beyond this, the oldest resolved are forgotten).
const RECORDS_MAX = 1000;

// How far a record has come: resolved beats open, more versions beat fewer.
const progress = (r) => [r.resolved ? 1 : 0, r.versions.length];
const behind = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
const target = (r) => `${r.bucket}/${r.key}` + (r.path ? ` .${r.path.map(String).join(".")}` : "");
const sameTarget = (a, b) => a.bucket === b.bucket && a.key === b.key && JSON.stringify(a.path ?? null) === JSON.stringify(b.path ?? null);

function hlcText(hlc) {
  const d = new Date(hlc.wall_ms);
  const time = `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 23)}`;
  return hlc.logical ? `${time} UTC +${hlc.logical}` : `${time} UTC`;
}

function valueText(v) {
  if (v.deleted) return "(deleted)";
  if (v.encoding === "json" || typeof v.value !== "string") return JSON.stringify(v.value);
  return v.value;
}

export class ConflictFeed {
  constructor(container, countEl, stateEl, deployment) {
    this.container = container;
    this.countEl = countEl;
    this.stateEl = stateEl;
    this.deployment = deployment;
    this.records = new Map(); // id -> the latest state seen
    this.cards = new Map(); // id -> { record, card }
    this.resolved = []; // the latest resolutions seen, newest first
    this.empty = el("p", { class: "muted empty" }, "No open conflicts in this node's conflict log.");
    this.resolvedList = el("ul", { class: "resolved" });
  }

  start() {
    this.render();
    follow("/v1/conflicts/events", {
      open: () => {
        this.stateEl.textContent = "live";
        this.list();
      },
      event: (e) => {
        if (e.type === "conflict") this.seen(JSON.parse(e.data));
        else if (e.type === "lagged") this.list();
      },
      error: (e) => {
        this.stateEl.textContent = e instanceof Unauthorized
          ? "waiting for a token"
          : `reconnecting to the conflict feed (${e.message})…`;
      },
    });
  }

  async list() {
    try {
      const resp = await api(`/v1/conflicts?limit=${LIST_LIMIT}`);
      if (!resp.ok) throw new Error(`GET /v1/conflicts answered ${resp.status}`);
      const body = await resp.json();
      // Oldest first, as they were committed.
      for (const r of body.conflicts.slice().reverse()) this.seen(r, false);
      this.render();
    } catch (e) {
      this.stateEl.textContent = e instanceof Unauthorized ? "waiting for a token" : `could not list conflicts: ${e.message}`;
    }
  }

  // A record's state, from the list or the stream.
  seen(r, render = true) {
    const known = this.records.get(r.id);
    if (known && (behind(progress(r), progress(known)) || JSON.stringify(known) === JSON.stringify(r))) return;
    this.records.set(r.id, r);
    if (r.resolved) {
      if (!known || !known.resolved) {
        this.resolved.unshift(r);
        this.resolved.length = Math.min(this.resolved.length, RESOLVED_SHOWN_MAX);
      }
    } else {
      // The record this one replaced (a version joined it) is no longer open.
      const ids = new Set(r.versions.map((v) => v.id));
      for (const [id, other] of this.records) {
        if (id !== r.id && !other.resolved && sameTarget(other, r) && other.versions.every((v) => ids.has(v.id))) {
          this.records.delete(id);
        }
      }
    }
    this.prune();
    if (render) this.render();
  }

  prune() {
    if (this.records.size <= RECORDS_MAX) return;
    const resolved = [...this.records.values()].filter((r) => r.resolved)
      .sort((a, b) => a.detected_at.localeCompare(b.detected_at));
    for (const r of resolved.slice(0, this.records.size - RECORDS_MAX)) this.records.delete(r.id);
  }

  open() {
    return [...this.records.values()].filter((r) => !r.resolved)
      .sort((a, b) => b.detected_at.localeCompare(a.detected_at));
  }

  render() {
    const open = this.open();
    this.countEl.textContent = String(open.length);
    for (const [id, { card }] of this.cards) {
      if (!open.some((r) => r.id === id)) {
        card.remove();
        this.cards.delete(id);
      }
    }
    // Cards are rebuilt only when their record changed: a value being typed survives.
    const cards = open.map((r) => {
      const shown = this.cards.get(r.id);
      if (shown && shown.record === r) return shown.card;
      const card = this.card(r);
      if (shown) shown.card.replaceWith(card);
      this.cards.set(r.id, { record: r, card });
      return card;
    });
    this.container.replaceChildren(...(cards.length ? cards : [this.empty]));
    this.resolvedList.replaceChildren(...this.resolved.map((r) => el("li", { "data-conflict-id": r.id },
      `${target(r)}: resolved by ${r.resolved.by} with ${r.resolved.version} in ${r.resolved.region} at ${new Date(r.resolved.at).toLocaleTimeString()}`)));
    if (this.resolved.length) this.container.append(el("h3", { class: "muted" }, "Recently resolved"), this.resolvedList);
  }

  card(r) {
    const outcome = el("p", { class: "outcome", role: "status" });
    const buttons = [];
    const columns = r.versions.map((v) => {
      const winner = v.id === r.winner;
      const pick = el("button", { class: "pick", type: "button", title: `resolve with version ${v.id}` }, "Keep this version");
      pick.addEventListener("click", () => this.resolve(r, { pick: v.id }, buttons, outcome));
      buttons.push(pick);
      return el("div", { class: winner ? "version winner" : "version", "data-version-id": v.id },
        el("div", { class: "version-head" },
          el("span", { class: "origin" }, v.origin),
          winner ? el("span", { class: "pill ok", title: "reads see this version" }, "winner") : null),
        el("div", { class: "hlc", title: `HLC ${v.hlc.wall_ms}.${v.hlc.logical}` }, hlcText(v.hlc)),
        el("pre", { class: "value", "data-encoding": v.encoding }, valueText(v)),
        el("div", { class: "meta muted" }, `${v.encoding} · version ${v.id}`),
        pick);
    });
    const input = el("input", { class: "value-input", type: "text", placeholder: r.path ? "a JSON value, or text" : "a new value (text)" });
    const use = el("button", { class: "use-value", type: "button" }, "Resolve with this value");
    use.addEventListener("click", () => {
      // A document property takes JSON (plain text is a string); a key takes the text's bytes.
      let value = input.value;
      if (r.path) {
        try { value = JSON.parse(input.value); } catch { value = input.value; }
      }
      this.resolve(r, { value }, buttons, outcome);
    });
    buttons.push(use);
    const versions = el("div", { class: "versions" }, columns);
    versions.style.gridTemplateColumns = `repeat(${columns.length}, minmax(0, 1fr))`;
    return el("article", { class: "conflict", "data-conflict-id": r.id },
      el("header", {},
        el("strong", { class: "target" }, target(r)),
        el("span", { class: "pill rule" }, r.rule),
        el("span", { class: "muted" }, `detected ${new Date(r.detected_at).toLocaleTimeString()} by ${r.detected_by} · ${r.versions.length} versions · id ${r.id}`)),
      versions,
      el("div", { class: "custom" }, input, use),
      outcome);
  }

  async resolve(r, body, buttons, outcome) {
    buttons.forEach((b) => { b.disabled = true; });
    outcome.className = "outcome";
    outcome.textContent = "resolving…";
    try {
      const resp = await api(`/v1/conflicts/${encodeURIComponent(r.id)}/resolve`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        redirect: "manual",
      });
      if (resp.type === "opaqueredirect" || resp.status === 307) {
        throw new Error(`this node does not take writes: open the dashboard of ${await this.leaderOf()} to resolve`);
      }
      if (resp.status === 403) {
        throw new Error("this token may only read: resolving takes the deployment's read-write token (cluster.json's token)");
      }
      const answer = await resp.json();
      if (!resp.ok) throw new Error(`${answer.code || resp.status}: ${answer.error || ""}`);
      outcome.className = "outcome ok";
      outcome.textContent = `resolved: written by ${answer.origin} as ${answer.origin}:${answer.seq}; waiting for the log`;
      setTimeout(() => this.list(), 1000);
    } catch (e) {
      outcome.className = "outcome bad";
      outcome.textContent = e.message;
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // This region's leader and its address: from the last deployment seen, else asked for
  // now (a click may come before the page's first poll of the deployment answered).
  async leaderOf() {
    let d = this.deployment();
    if (!d) {
      try {
        const resp = await api("/v1/deployment");
        if (resp.ok) d = await resp.json();
      } catch (_) {
        // Named generically below.
      }
    }
    if (!d) return "the region's leader";
    const mine = Object.values(d.regions).find((r) => r.nodes.some((n) => n.node === d.gathered_by));
    const leader = mine && mine.nodes.find((n) => n.node === mine.leader);
    return leader ? `${leader.node} (${leader.http}/ui)` : "the region's leader";
  }
}
