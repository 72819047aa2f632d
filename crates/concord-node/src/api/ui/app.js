// The dashboard's main loop. Every POLL_MS it asks this node for the whole deployment
// (GET /v1/deployment), shows the regions, and keeps the lag history the charts draw;
// the conflict feed runs beside it (conflicts.js). Nothing but this node is contacted.
//
// Every request carries the API token (auth.js). Without one, or once the node refused
// it, the page shows the token form instead of the data, and asks nothing of the node
// until a token is given.

import { giveToken, invalidToken, takeTokenFromFragment, token, tokens, api, Unauthorized } from "/ui/auth.js";
import { renderRegions } from "/ui/regions.js";
import { LagHistory, drawCharts } from "/ui/chart.js";
import { ConflictFeed } from "/ui/conflicts.js";

const POLL_MS = 2000;
// The shortest pause between two polls, however long the last one took.
const PAUSE_MIN_MS = 250;
const HISTORY_MS = 10 * 60 * 1000;

const $ = (id) => document.getElementById(id);
const history = new LagHistory(HISTORY_MS);
// The last deployment seen (the conflict feed names the region's leader from it).
let deployment = null;

const feed = new ConflictFeed($("conflicts"), $("conflicts-count"), $("feed-state"), () => deployment);

function nodeCount(body) {
  return Object.values(body.regions).reduce((n, r) => n + r.nodes.length, 0);
}

function showHealth(body) {
  const health = $("health");
  const regions = Object.entries(body.regions);
  const cut = regions.filter(([, r]) => !r.reachable).map(([name]) => name);
  const missing = regions.flatMap(([, r]) => r.missing);
  if (body.complete) {
    health.textContent = `all ${nodeCount(body)} nodes of ${regions.length} regions answered`;
    health.className = "pill ok";
  } else {
    const parts = [];
    if (cut.length) parts.push(`unreachable: ${cut.join(", ")}`);
    if (missing.length) parts.push(`not answering: ${missing.join(", ")}`);
    health.textContent = parts.join("; ");
    health.className = "pill bad";
  }
}

function render(body, at) {
  deployment = body;
  $("served-by").textContent = `served by ${body.gathered_by}`;
  $("updated").textContent = `updated ${new Date(at).toLocaleTimeString()} (gathered in ${body.gathered_ms} ms)`;
  $("regions-note").textContent = "";
  showHealth(body);
  renderRegions($("regions"), body);
  history.add(at, body);
  drawCharts($("chart-seq"), $("chart-ms"), $("legend"), history, at);
}

function showError(e) {
  const health = $("health");
  health.textContent = `this node did not answer: ${e.message}`;
  health.className = "pill bad";
  $("regions-note").textContent = "Showing the last answer; retrying every 2 s.";
}

async function poll() {
  const started = Date.now();
  try {
    const resp = await api("/v1/deployment");
    if (!resp.ok) throw new Error(`GET /v1/deployment answered ${resp.status}`);
    render(await resp.json(), Date.now());
  } catch (e) {
    if (!(e instanceof Unauthorized)) showError(e);
  }
  setTimeout(poll, Math.max(PAUSE_MIN_MS, POLL_MS - (Date.now() - started)));
}

// The form instead of the data, saying why.
function askForToken(why) {
  $("token-reason").textContent = why;
  $("token-section").hidden = false;
  $("data").hidden = true;
  $("health").textContent = "no token";
  $("health").className = "pill bad";
  $("token-input").focus();
}

function showData() {
  $("token-section").hidden = true;
  $("data").hidden = false;
  $("health").textContent = "asking this node…";
  $("health").className = "pill";
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault(); // nothing is submitted anywhere: the token stays in this page
  const input = $("token-input");
  const text = input.value.trim();
  const invalid = invalidToken(text);
  if (invalid) {
    $("token-reason").textContent = invalid;
    return;
  }
  input.value = "";
  giveToken(text);
});
tokens.addEventListener("needed", (e) => askForToken(e.detail));
tokens.addEventListener("given", showData);

const fragmentRefused = takeTokenFromFragment();
if (token() === null) askForToken(fragmentRefused || "");
else showData();
poll();
feed.start();
