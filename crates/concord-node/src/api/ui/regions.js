// The regions of GET /v1/deployment: one card per region, its leader and followers,
// and per node its role, epoch, what its writer does, and its lag behind every log it
// reads. Every value is set as text (never markup).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

// "1.2 s", "340 ms", "3 min".
export function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

// One log a node reads: messages behind and the age of the oldest it has not applied,
// or why that is unknown; CUT when its mirror has not heard from the upstream region.
function lagCell(origin, lag, ownRegion) {
  const cell = el("span", { class: "lag", "data-origin": origin }, el("span", { class: "origin" }, origin));
  if (!lag.seq && lag.seq !== 0) {
    cell.classList.add("bad");
    cell.append(el("span", { class: "lag-value" }, `unknown: ${lag.error || "no measure"}`));
    return cell;
  }
  const cut = origin !== ownRegion && !lag.mirror_connected;
  cell.append(el("span", { class: "lag-value", "data-seq": String(lag.seq), "data-ms": String(lag.ms) },
    `${lag.seq} msgs · ${duration(lag.ms)}`));
  if (cut) {
    cell.classList.add("bad");
    const since = lag.mirror_active_ms === null || lag.mirror_active_ms === undefined
      ? "no upstream" : `no upstream for ${duration(lag.mirror_active_ms)}`;
    cell.append(el("span", { class: "cut", title: "the mirror does not hear its upstream region: its lag cannot grow while cut" }, `CUT (${since})`));
  } else if (lag.seq > 0) {
    cell.classList.add("warn");
  }
  return cell;
}

function nodeRow(n, region, leaderStatus) {
  const s = n;
  const lags = Object.entries(s.lag || {}).map(([origin, lag]) => lagCell(origin, lag, region));
  const problems = [];
  for (const g of s.gaps || []) problems.push(`gap in ${g.origin} after ${g.applied} (${g.waiting} waiting)`);
  for (const [stream, st] of Object.entries(s.streams || {})) {
    if (st.parked) problems.push(`${stream} parked at ${st.parked.seq}: ${st.parked.reason}`);
  }
  if (s.dead_letters) problems.push(`${s.dead_letters} dead letters`);
  const reported = leaderStatus && leaderStatus.followers && leaderStatus.followers[s.node];
  const heard = s.role === "follower"
    ? (reported ? `leader hears it: ${reported.lag_seq} behind, ${duration(reported.reported_ms_ago)} ago` : "its leader does not hear it")
    : "";
  return el("tr", { "data-node": s.node, "data-role": s.role, class: s.role },
    el("td", { class: "node" }, el("div", { class: "name" }, s.node), el("div", { class: "addr muted" }, n.http)),
    el("td", { class: "role" }, s.role),
    el("td", { class: "epoch" }, String(s.epoch)),
    el("td", { class: "writer" }, s.writer || ""),
    el("td", { class: "lags" }, lags.length ? lags : el("span", { class: "muted" }, "reads no other log")),
    el("td", { class: "open-conflicts" }, String(s.open_conflicts ?? 0)),
    el("td", { class: problems.length ? "problems bad" : "problems muted" }, problems.length ? problems.join("; ") : heard || "no problems"),
  );
}

function regionCard(name, r) {
  const card = el("article", { class: "region", "data-region": name, "data-reachable": String(r.reachable) });
  const leader = r.nodes.find((n) => n.node === r.leader);
  const followers = r.nodes.filter((n) => n.node !== r.leader);
  card.append(el("h3", {}, name, r.reachable ? null : el("span", { class: "pill bad" }, "unreachable")));
  if (!r.reachable) {
    card.append(el("p", { class: "muted" },
      "No node of this region answered this node in time: it is cut off from this region, or down. Its writes still reach the others once it is back."));
    return card;
  }
  card.append(el("p", { class: "who" },
    "Leader ", el("strong", { class: "leader", "data-leader": r.leader }, r.leader || "none known"),
    leader ? ` (epoch ${leader.epoch})` : "",
    " · Followers ",
    el("span", { class: "followers" }, followers.length ? followers.map((f) => f.node).join(", ") : "none")));
  const head = el("tr", {}, ...["Node", "Role", "Epoch", "Writer", "Lag behind each log (messages · oldest unapplied)", "Open conflicts", "Notes"]
    .map((h) => el("th", {}, h)));
  const rows = r.nodes.map((n) => nodeRow(n, name, leader));
  card.append(el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
  if (r.missing.length) {
    card.append(el("p", { class: "missing bad" }, `Named by this region but not answering: ${r.missing.join(", ")}`));
  }
  return card;
}

export function renderRegions(container, body) {
  const names = Object.keys(body.regions).sort();
  container.replaceChildren(...names.map((name) => regionCard(name, body.regions[name])));
}
