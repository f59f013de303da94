// The page: wires the controls to one Connection and one Log. Everything the page sends is
// checked first (validate.js); every failure says why, in the log and in the alert line.

import { wireConformance } from "./conformance.js";
import { Connection, csrfToken } from "./connection.js";
import { timestamp, utf8Length } from "./format.js";
import { Log } from "./log.js";
import { MemberList } from "./presence.js";
import { offer } from "./rooms.js";
import { History, Snippets, download, formatJson } from "./tools.js";
import { BEHAVIOURS, behaviourQuery, binarySizeError, closeError, parseSubprotocols, repeatError, roomError } from "./validate.js";

const $ = (id) => document.getElementById(id);
const root = $("client");
const maxBytes = Number(root.dataset.maxBytes);
const state = $("state");
const alertLine = $("alert");
const phone = window.matchMedia("(max-width: 720px)");
const whileOpen = ["send-text", "send-binary", "binary-file", "send-oversize"].map($);

const log = new Log({
  scroller: $("log"),
  list: $("entries"),
  olderNote: $("older"),
  newButton: $("new-entries"),
  announcer: $("announcer"),
  onFlush: showStats,
});
const members = new MemberList({
  count: $("presence-count"),
  list: $("presence-list"),
  more: $("presence-more"),
  note: $("presence-note"),
  announcer: $("presence-announcer"),
});
const connection = new Connection({ log, onState: showState, onError: showError, onPresence: showPresence });
const signedIn = root.dataset.user || "";  // the Django user of this page's session, if any
// The room the token field's token was issued for by the server (null: typed or pasted): a
// token is for one exact room, so changing the room forgets an issued one. The token is never
// written to localStorage, the log or the URL bar.
let tokenRoom = null;
let preparing = false;  // Connect is getting a token: a second press waits
const history = new History($("text"));
const snippets = new Snippets($("snippets"));

// Diagnostics for the browser tests and for anyone curious in DevTools.
window.echoClient = { log, connection, members };

function showError(message) {
  alertLine.textContent = message;
  alertLine.hidden = false;
}

function clearError() {
  alertLine.hidden = true;
  alertLine.textContent = "";
}

// A refusal of the page's own: nothing is sent, the reason is shown, focus goes to the field.
function refuse(message, field) {
  log.add({ kind: "error", summary: message });
  showError(message);
  if (field) field.focus();
}

function showState(name) {
  state.textContent = name;
  state.className = "state state-" + name;
  const open = name === "open";
  whileOpen.forEach((control) => { control.disabled = !open; });
  $("connect").disabled = !(name === "closed" || name === "waiting");
  $("close").disabled = !(open || name === "connecting" || name === "waiting");
  $("connect").textContent = name === "waiting" ? "Reconnect now" : "Connect";
  $("apply-note").hidden = true;
  if (open) {
    clearError();
    if (phone.matches) $("connection-details").open = false;  // the log and composer need the room
    $("text").focus();
  } else if (name === "closed") {
    $("connection-details").open = true;
    if (document.activeElement === document.body || document.activeElement?.disabled) $("connect").focus();
  }
  showStats();
}

function showStats() {
  const s = connection.stats;
  const since = s.since ? `connected since ${s.since.toLocaleTimeString([], { hour12: false })}` : "not connected";
  $("stats").textContent =
    `sent ${s.sentMessages} msgs, ${s.sentBytes} B \u00b7 received ${s.receivedMessages} msgs, ` +
    `${s.receivedBytes} B \u00b7 ${since}`;
}

// Who is in the room (the "Members" panel), after any frame that may have changed it.
function showPresence(presence, self) {
  const why = connection.roomSession
    ? "Waiting for the welcome\u2026"
    : connection.socket && connection.options?.mode === "room"
      ? "This connection does not speak rooms.v1: no member list."
      : "Not in a room: press Connect.";
  members.show(presence, self, connection.options?.room ?? "", why);
}

// A room token from the server (POST /rooms/<room>/token) for the signed-in user; it fills the
// token field. Returns the token, or null once the reason is in the log (and, if `loud`, the
// alert line).
async function fetchToken(room, loud) {
  let response, body;
  try {
    response = await fetch(`/rooms/${encodeURIComponent(room)}/token`, {
      method: "POST", headers: { "X-CSRFToken": csrfToken() }, cache: "no-store",
    });
    body = await response.json().catch(() => ({}));
  } catch (err) {
    body = { error: `the server is not answering (${err.message})` };
  }
  if (!response?.ok || typeof body.token !== "string") {
    const message = `no token for room ${room}: ${body.error ?? "no token in the answer"}${response ? ` (HTTP ${response.status})` : ""}`;
    if (loud) refuse(message, $("room-token"));
    else log.add({ kind: "note", summary: `${message}; connecting without one` });
    return null;
  }
  $("room-token").value = body.token;
  tokenRoom = room;
  const until = Number.isFinite(body.expires) ? `, until ${new Date(body.expires * 1000).toLocaleTimeString([], { hour12: false })}` : "";
  log.add({
    kind: "note",
    summary: `a token for room ${body.room ?? room}: member ${body.member}, ${body.publish ? "read and publish" : "read only"}${until}`,
  });
  return body.token;
}

async function getToken() {
  const room = $("room").value.trim();
  const problem = roomError(room);
  if (problem) return refuse(problem, $("room"));
  if (await fetchToken(room, true)) clearError();
}

function roomChanged() {
  if (tokenRoom !== null && tokenRoom !== $("room").value.trim()) {
    $("room-token").value = "";  // issued for the old room: no use in this one
    tokenRoom = null;
  }
}

async function connect(event) {
  event.preventDefault();
  if (preparing) return;
  const mode = $("mode").value;
  const room = $("room").value.trim();
  const { list, error } = parseSubprotocols($("subprotocols").value);
  if (error) return refuse(error, $("subprotocols"));
  if (mode === "room") {
    const problem = roomError(room);
    if (problem) return refuse(problem, $("room"));
  }
  let query = "";
  if (mode === "test") {
    const built = checkedBehaviour();
    if (!built) return;
    query = built.query;
  }
  let token = "";
  if (mode === "room") {
    token = $("room-token").value.trim();
    if (/\s/.test(token)) return refuse("a room token has no spaces: paste it whole", $("room-token"));
    if (!token && signedIn) {
      preparing = true;
      try {
        token = (await fetchToken(room, false)) ?? "";
      } finally {
        preparing = false;
      }
    }
  }
  clearError();
  const traced = $("trace").checked;
  $("log").classList.toggle("traced", traced);
  $("columns").hidden = !traced;
  // Room mode offers rooms.v1 (JSON frames with offsets, resume) unless unticked, then the rest.
  const subprotocols = offer(list, mode === "room" && $("rooms-v1").checked);
  connection.connect({
    mode, room, token, query, consumer: mode === "test" ? "test" : $("consumer").value, subprotocols, traced,
    reconnect: $("reconnect").checked,
  });
}

// The "Server behaviour" panel: /ws/test/'s parameters, checked with the server's own rules.
function readBehaviour() {
  const values = {};
  for (const { name, kind } of BEHAVIOURS) {
    const field = $(`b-${name}`);
    values[name] = kind === "flag" ? field.checked : field.value;
  }
  return behaviourQuery(values);
}

function behaviourUrl(query) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/test/${query ? `?${query}` : ""}`;
}

function showBehaviourUrl() {
  const { query, error } = readBehaviour();
  $("behaviour-url").textContent = error ? `(not usable: ${error})` : behaviourUrl(query);
  $("behaviour-url").classList.toggle("invalid", Boolean(error));
}

// The query, or null once the broken rule is shown and its field focused.
function checkedBehaviour() {
  const built = readBehaviour();
  if (!built.error) return built;
  $("behaviour-details").open = true;
  refuse(built.error, $(`b-${built.name}`));
  return null;
}

async function copyBehaviourUrl() {
  const built = checkedBehaviour();
  if (!built) return;
  const url = behaviourUrl(built.query);
  try {
    await navigator.clipboard.writeText(url);
    clearError();
    log.add({ kind: "note", summary: `copied ${url}` });
  } catch (err) {
    refuse(`cannot copy: ${err.message} (select the URL and copy it instead)`);
  }
}

function modeChanged() {
  const mode = $("mode").value;
  $("room-label").hidden = mode !== "room";
  $("rooms-v1-label").hidden = mode !== "room";
  $("token-row").hidden = mode !== "room";
  $("presence").hidden = mode !== "room";
  $("consumer-label").hidden = mode === "test";  // /ws/test/ is one (async) consumer
  if (mode === "test") $("behaviour-details").open = true;
}

function closeSocket(event) {
  event.preventDefault();
  const code = Number($("close-code").value);
  const reason = $("close-reason").value;
  const problem = closeError(code, reason);
  if (problem) return refuse(problem, $("close-code"));
  connection.close(code, reason);
}

function sendText(event) {
  event.preventDefault();
  if (connection.state !== "open") return refuse("not connected: press Connect first", $("connect"));
  const repeat = Number($("repeat").value);
  const problem = repeatError(repeat);
  if (problem) return refuse(problem, $("repeat"));
  const text = $("text").value;
  history.remember(text);
  const summary = `text, ${utf8Length(text)} bytes`;
  sendRepeated(repeat, () => connection.send(text, summary, { text }));
  $("text").select();
}

// Large bursts go out in slices, one task each, so the page never stalls while it sends.
function sendRepeated(count, sendOne, slice = 250) {
  let left = count;
  const step = () => {
    for (let i = 0; i < slice && left > 0; i++, left--) if (!sendOne()) return;
    if (left > 0) setTimeout(step, 0);
  };
  step();
}

function patternBytes(size) {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = i & 0xff;
  return data;
}

function sendBytes(data, summary) {
  connection.send(data, summary, { bytes: data.slice(0, 4096), size: data.byteLength });
}

function sendBinary(event) {
  event.preventDefault();
  const size = Number($("binary-size").value);
  const problem = binarySizeError(size);
  if (problem) return refuse(problem, $("binary-size"));
  sendBytes(patternBytes(size), `binary, ${size} bytes`);
}

async function sendFile() {
  const file = $("binary-file").files[0];
  if (!file) return;
  if (binarySizeError(file.size)) {
    $("binary-file").value = "";
    return refuse(binarySizeError(file.size), $("binary-file"));
  }
  const data = new Uint8Array(await file.arrayBuffer());
  sendBytes(data, `binary, ${data.byteLength} bytes from file ${file.name}`);
  $("binary-file").value = "";
}

function sendOversize() {
  sendBytes(patternBytes(maxBytes + 1), `binary, ${maxBytes + 1} bytes (one over the limit)`);
}

// Mode, room, rooms.v1, consumer, subprotocols and Trace are read at Connect: say so when changed while open.
function settingChanged() {
  if (connection.state !== "closed") $("apply-note").hidden = false;
}

function textKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("text-form").requestSubmit();
  }
}

function formatText() {
  const { text, error } = formatJson($("text").value);
  if (error) return refuse(error, $("text"));
  clearError();
  $("text").value = text;
}

function saveSnippet() {
  const text = $("text").value;
  if (!text) return refuse("nothing to save: type the text first", $("text"));
  const name = text.split("\n")[0].slice(0, 40);
  snippets.save(name, text);
  log.add({ kind: "note", summary: `saved snippet "${name}"` });
}

function useSnippet() {
  const text = snippets.get($("snippets").value);
  if (text !== undefined) $("text").value = text;
  $("text").focus();
}

async function copyLog() {
  try {
    await navigator.clipboard.writeText(JSON.stringify(log.toJSON(), null, 2));
    log.add({ kind: "note", summary: `copied ${log.entries.length} entries as JSON` });
  } catch (err) {
    refuse(`cannot copy: ${err.message} (Export saves a file instead)`);
  }
}

function exportLog() {
  const stamp = timestamp().replaceAll(":", "-").replace(".", "-");
  download(`echo-log-${stamp}.json`, JSON.stringify(log.toJSON(), null, 2));
}

$("connect-form").addEventListener("submit", connect);
$("close-form").addEventListener("submit", closeSocket);
$("text-form").addEventListener("submit", sendText);
$("text").addEventListener("keydown", textKey);
$("binary-form").addEventListener("submit", sendBinary);
$("binary-file").addEventListener("change", sendFile);
$("send-oversize").addEventListener("click", sendOversize);
$("format-json").addEventListener("click", formatText);
$("save-snippet").addEventListener("click", saveSnippet);
$("snippets").addEventListener("change", useSnippet);
$("clear-log").addEventListener("click", () => log.clear());
$("copy-log").addEventListener("click", copyLog);
$("export-log").addEventListener("click", exportLog);
$("search").addEventListener("input", () => log.setFilter({ text: $("search").value }));
$("filter").addEventListener("change", () => log.setFilter({ kind: $("filter").value }));
$("mode").addEventListener("change", modeChanged);
$("room").addEventListener("input", roomChanged);
$("room-token").addEventListener("input", () => { tokenRoom = null; });
$("get-token").addEventListener("click", getToken);
$("behaviour-form").addEventListener("input", () => { showBehaviourUrl(); if ($("mode").value === "test") settingChanged(); });
$("behaviour-form").addEventListener("submit", (event) => event.preventDefault());
$("copy-url").addEventListener("click", copyBehaviourUrl);
showBehaviourUrl();
for (const id of ["mode", "room", "room-token", "rooms-v1", "consumer", "subprotocols", "trace"]) $(id).addEventListener("change", settingChanged);
$("more-send").open = !phone.matches;  // on a phone the log and the text box come first
showState("closed");
modeChanged();  // a reload keeps the mode select's value
wireConformance($("conformance"));  // "Test this browser": the Autobahn client cases
