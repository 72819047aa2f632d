// The API token: where the page gets it, where it keeps it, and the one function every
// request of the page goes through (api), which sends it.
//
// - It comes from the URL's fragment (`/ui#token=...`: a browser never sends the
//   fragment to a server, so it is in no request line and no log) or from the form the
//   page shows without one. The fragment is removed from the address bar at once
//   (history.replaceState), so a link copied from the page does not carry it.
// - It is kept in sessionStorage: this tab only, gone when the tab closes, and never
//   sent anywhere but as `Authorization: Bearer` to the node that served the page.
// - Without a token no request is made: api() waits until one is given. A 401 forgets
//   the token and asks for it again (the "needed" event); a 403 (a read token on a
//   write) is the caller's to explain.

const KEY = "concord.api-token";
// The longest a request may take, answer and body (a stream sets its own limits).
export const REQUEST_TIMEOUT_MS = 15000;
// What a token sent as a header may hold: printable ASCII, no spaces (the node takes
// nothing shorter than 16 bytes; a browser cannot send anything beyond Latin-1 anyway).
const TOKEN_PATTERN = /^[\x21-\x7e]{16,4096}$/;

// Who listens: "needed" (detail: why, as a sentence) and "given".
export const tokens = new EventTarget();

// The node refused the token (401): sign in again.
export class Unauthorized extends Error {}

let current = load();
let waiters = [];

function load() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null; // storage disabled: the token lives as long as the page
  }
}

function store(token) {
  try {
    if (token === null) sessionStorage.removeItem(KEY);
    else sessionStorage.setItem(KEY, token);
  } catch {
    // kept in memory only
  }
}

export function token() {
  return current;
}

// Why `text` cannot be a token, or null when it can.
export function invalidToken(text) {
  if (!text) return "enter the token";
  return TOKEN_PATTERN.test(text) ? null : "a token is 16 or more printable ASCII characters, without spaces";
}

// Use `text` as the token from now on (already checked with invalidToken).
export function giveToken(text) {
  current = text;
  store(text);
  const ready = waiters;
  waiters = [];
  for (const wake of ready) wake(text);
  tokens.dispatchEvent(new Event("given"));
}

// Forget the token `refused` (unless another was given since) and ask for one.
function refuse(refused, why) {
  if (current !== refused) return;
  current = null;
  store(null);
  tokens.dispatchEvent(new CustomEvent("needed", { detail: why }));
}

// The token, once there is one.
export function tokenReady() {
  return current !== null ? Promise.resolve(current) : new Promise((wake) => waiters.push(wake));
}

// Take `token=...` out of the fragment, keep it, and take it off the address bar. Returns
// why it cannot be used when there was one, else null.
export function takeTokenFromFragment() {
  const parts = location.hash.replace(/^#/, "").split("&").filter((p) => p !== "");
  const at = parts.findIndex((p) => p.startsWith("token="));
  if (at < 0) return null;
  let text;
  try {
    text = decodeURIComponent(parts[at].slice("token=".length)).trim();
  } catch {
    text = "";
  }
  parts.splice(at, 1);
  const rest = parts.length ? `#${parts.join("&")}` : "";
  history.replaceState(history.state, "", `${location.pathname}${location.search}${rest}`);
  const invalid = invalidToken(text);
  if (invalid) return `the token in the address was not used: ${invalid}`;
  giveToken(text);
  return null;
}

// fetch(path) on this node with the token, waiting for one first. `init.signal`, when
// given, replaces the request's own timeout. Throws Unauthorized on a 401 (after asking
// for the token again); every other answer is returned.
export async function api(path, init = {}) {
  const sent = await tokenReady();
  const headers = new Headers(init.headers || {});
  headers.set("authorization", `Bearer ${sent}`);
  const signal = init.signal || AbortSignal.timeout(REQUEST_TIMEOUT_MS);
  let resp;
  try {
    resp = await fetch(path, { cache: "no-store", ...init, headers, signal });
  } catch (e) {
    if (e.name === "TimeoutError") throw new Error(`no answer in ${REQUEST_TIMEOUT_MS / 1000} s`);
    throw e;
  }
  if (resp.status === 401) {
    refuse(sent, "This node refused the token: it is not one of this deployment's.");
    throw new Unauthorized("this node refused the token: enter it again");
  }
  return resp;
}
