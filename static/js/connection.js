// One WebSocket connection and its state machine. Every path (refused, failed, traced or not,
// the server gone, closed by either side) ends in a defined state; a transition that the table
// does not allow is a bug, and throws.
//
//   closed --connect--> preparing (getting a trace token) --> connecting --> open --> closing
//     ^                     |                                     |            |         |
//     +---------------------+-------------------------------------+------------+---------+
//   closed --(auto-reconnect on, not closed by the page)--> waiting --timer--> preparing/connecting
//
// In room mode the page offers rooms.v1 (rooms.js): when the server accepts it, each frame is
// read as JSON and the member's position (epoch:offset) kept. A connection to the same room
// after one the page did not close (a restart's 1012, a 1013, a dropped network; by the
// auto-reconnect or by Connect) resumes with `?since=<epoch>:<offset>`.
//
// A room token (options.token, for private rooms; issue 31) travels as `?token=` on the room's
// URL: a browser cannot set headers on a WebSocket. The log shows it as `token=…`, never in
// clear, and nothing here keeps it anywhere but in this connection's options.

import { byteSize, closeName, contentKey } from "./format.js";
import { PROTOCOL, RoomSession, sinceQuery } from "./rooms.js";

const NEXT = {
  closed: ["preparing", "connecting", "waiting"],
  preparing: ["connecting", "closed"],
  connecting: ["open", "closing", "closed"],
  open: ["closing", "closed"],
  closing: ["closed"],
  waiting: ["preparing", "connecting", "closed"],
};
const PENDING_LIMIT = 10000;  // sends waiting for their echo, for round-trip times
const BACKOFF = { first: 500, most: 30000 };  // ms: 0.5 s, doubling, at most 30 s

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export class Connection {
  // onState(state), log (a Log), onError(message): what the page shows; onPresence(presence,
  // member): who is in the room (a rooms.js Presence, and this member's name) after a frame
  // that may have changed it, or (null, null) when there is no room to show.
  constructor({ log, onState, onError, onPresence = () => {} }) {
    Object.assign(this, { log, onState, onError, onPresence });
    this.presenceVersion = -1;  // the version onPresence was last told of
    this.state = "closed";
    this.generation = 0;  // which connect() a late callback belongs to
    this.socket = null;
    this.trace = null;
    this.options = null;
    this.pending = new Map();  // content key -> [{at, id}] of sends awaiting their echo
    this.pendingCount = 0;
    this.attempt = 0;
    this.timer = 0;
    this.roomSession = null;  // this connection's rooms.v1 state, while it speaks rooms.v1
    this.lastRoom = null;  // the last rooms.v1 session: where a reconnect resumes from
    this.stats = { sentMessages: 0, sentBytes: 0, receivedMessages: 0, receivedBytes: 0, since: null };
  }

  set(state) {
    if (!NEXT[this.state].includes(state)) throw new Error(`connection: ${this.state} -> ${state} is not a transition`);
    this.state = state;
    this.onState(state);
  }

  // options: {mode, consumer, room, token (a room token, or ""), subprotocols (list), traced, reconnect}
  async connect(options) {
    if (this.state !== "closed" && this.state !== "waiting") return;
    // A resume: the last connection to this room ended without the page closing it.
    const last = this.lastRoom;
    const since = options.mode === "room" && options.subprotocols.includes(PROTOCOL) && !this.closedByPage &&
      last?.room === options.room && last.position ? last.position : null;
    clearTimeout(this.timer);
    this.stopTrace();  // the last connection's trace socket stays open for its last records until now
    const generation = ++this.generation;
    this.options = options;
    this.closedByPage = false;
    this.log.traceStart = null;
    Object.assign(this.stats, { sentMessages: 0, sentBytes: 0, receivedMessages: 0, receivedBytes: 0, since: null });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const path = {
      room: `/ws/broadcast/${options.consumer}/${encodeURIComponent(options.room)}/`,
      test: "/ws/test/",  // options.query: the "Server behaviour" panel's parameters
    }[options.mode] ?? `/ws/echo/${options.consumer}/`;
    const behaviour = options.mode === "test" && options.query ? options.query : since ? sinceQuery(since) : "";
    const token = options.mode === "room" && options.token ? `token=${encodeURIComponent(options.token)}` : "";
    // What /handshake-check is asked about when the handshake fails: the path and its query, the
    // token included (the server's logs and nginx's redact it there too), the trace token not.
    const checked = [behaviour, token].filter(Boolean).join("&");
    const asked = checked ? `${path}?${checked}` : path;
    let query = checked ? `?${checked}` : "";
    if (options.traced) {
      this.set("preparing");
      try {
        this.trace = await this.openTrace(scheme);
        query += `${query ? "&" : "?"}trace=${encodeURIComponent(this.trace.token)}`;
      } catch (err) {
        this.stopTrace();
        this.fail(`cannot trace: ${err.message}`);
        this.set("closed");
        await this.explain(asked, options.subprotocols);
        this.ended(generation);
        return;
      }
    }
    this.set("connecting");
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}${path}${query}`, options.subprotocols);
    } catch (err) {  // the page validates first; this is the browser's own refusal
      this.stopTrace();
      this.fail(`cannot connect: ${err.message}`);
      this.set("closed");
      this.ended(generation);
      return;
    }
    this.socket = ws;
    ws.binaryType = "arraybuffer";
    this.pending.clear();
    this.pendingCount = 0;
    const offered = options.subprotocols.length ? ` offering ${options.subprotocols.join(", ")}` : " with no subprotocol";
    // The trace token and the room token stay out of the log, as they do in the server's lines.
    const shown = [behaviour, token ? "token=\u2026" : "", this.trace ? "trace=(token)" : ""].filter(Boolean).join("&");
    this.log.add({ kind: "connecting", summary: `${scheme}://${location.host}${path}${shown ? `?${shown}` : ""}${offered}` });
    let opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      this.attempt = 0;
      this.stats.since = new Date();
      this.set("open");
      this.roomSession = options.mode === "room" && ws.protocol === PROTOCOL ? new RoomSession(options.room, since) : null;
      if (this.roomSession) this.lastRoom = this.roomSession;
      this.showPresence();
      const where = options.mode === "room" ? ` in room ${options.room}` : "";
      const to = options.mode === "test" ? "the test server (/ws/test/)" : `the ${options.consumer} consumer${where}`;
      this.log.add({ kind: "open", summary: `connected to ${to}; subprotocol: ${ws.protocol || "(none)"}; extensions: ${ws.extensions || "(none)"}` });
    });
    ws.addEventListener("message", (msg) => this.received(msg.data));
    ws.addEventListener("close", async (ev) => {
      if (this.socket === ws) {
        this.socket = null;
        this.roomSession = null;
        this.showPresence();
      }
      this.stats.since = null;
      this.set("closed");
      const reason = ev.reason ? ` reason "${ev.reason}"` : " no reason";
      this.log.add({ kind: "close", summary: `code ${ev.code} (${closeName(ev.code)})${reason}, wasClean ${ev.wasClean}` });
      if (!opened && !this.closedByPage) {
        this.stopTrace();  // nothing to trace: no connection
        this.fail("the handshake failed (a browser reports only 1006); asking the server why\u2026");
        await this.explain(asked, options.subprotocols);
      }
      this.ended(generation);
    });
  }

  // After a connection ends: wait and reconnect if the page asked for it and did not close.
  ended(generation) {
    if (generation !== this.generation || this.state !== "closed") return;  // a newer connect() took over
    if (!this.options.reconnect || this.closedByPage) return;
    const delay = Math.min(BACKOFF.most, BACKOFF.first * 2 ** this.attempt);
    this.attempt += 1;
    this.set("waiting");
    this.log.add({ kind: "reconnect", summary: `reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${this.attempt}); Close cancels` });
    this.timer = setTimeout(() => this.connect(this.options), delay);
  }

  close(code, reason) {
    this.closedByPage = true;
    if (this.state === "waiting") {
      clearTimeout(this.timer);
      this.set("closed");
      this.log.add({ kind: "reconnect", summary: "reconnecting cancelled" });
      return;
    }
    if (!this.socket) return;
    this.socket.close(code, reason);  // validated by the page first
    this.set("closing");
    this.log.add({ kind: "closing", summary: `code ${code} (${closeName(code)})` + (reason ? ` reason "${reason}"` : "") });
  }

  send(data, summary, extra = {}) {
    if (this.state !== "open") {
      this.fail("not connected: press Connect first");
      return false;
    }
    const size = byteSize(data);
    const entry = this.log.add({ kind: "sent", summary, ...extra });
    if (this.options.mode !== "room") this.expectEcho(data, entry.id);  // echo and test echo
    this.socket.send(data);
    this.stats.sentMessages += 1;
    this.stats.sentBytes += size;
    return true;
  }

  expectEcho(data, id) {
    if (this.pendingCount >= PENDING_LIMIT) {  // echoes that never came back (daphne drops empty ones)
      this.pending.clear();
      this.pendingCount = 0;
    }
    const key = contentKey(data);
    const list = this.pending.get(key);
    const sent = { at: performance.now(), id };
    if (list) list.push(sent); else this.pending.set(key, [sent]);
    this.pendingCount += 1;
  }

  // The send an echo answers: the oldest with the same content (the echo keeps order), so a
  // message the server dropped leaves no gap in the pairing of the others.
  matchEcho(data) {
    if (this.options.mode === "room" || !this.pendingCount) return null;
    const key = contentKey(data);
    const list = this.pending.get(key);
    if (!list) return null;
    const sent = list.shift();
    if (!list.length) this.pending.delete(key);
    this.pendingCount -= 1;
    return sent;
  }

  received(data) {
    const now = performance.now();
    this.lastReceivedAt = now;  // the script's receipt of the last message, for profiling
    const size = byteSize(data);
    const sent = this.matchEcho(data);
    const rtt = sent ? ` in ${(now - sent.at).toFixed(1)} ms (echo of #${sent.id})` : "";
    this.stats.receivedMessages += 1;
    this.stats.receivedBytes += size;
    if (this.roomSession) {
      for (const entry of this.roomSession.receive(data, size)) {
        if (entry.violation) this.fail(entry.summary, entry);
        else this.log.add(entry);
      }
      if (this.roomSession.presence?.version !== this.presenceVersion) this.showPresence();
      return;
    }
    if (typeof data === "string") {
      this.log.add({ kind: "received", summary: `text, ${size} bytes${rtt}`, text: data, rtt: sent ? now - sent.at : undefined });
    } else {
      const bytes = new Uint8Array(data, 0, Math.min(size, 4096));
      this.log.add({ kind: "received", summary: `binary, ${size} bytes${rtt}`, bytes: bytes.slice(), size, rtt: sent ? now - sent.at : undefined });
    }
  }

  // Tell the page who is in the room now: cheap, the page draws at most once a frame.
  showPresence() {
    const session = this.roomSession;
    const presence = session?.presence ?? null;
    this.presenceVersion = presence ? presence.version : -1;
    this.onPresence(presence, session ? session.member : null);
  }

  fail(message, entry = { kind: "error", summary: message }) {
    this.log.add(entry);
    this.onError(message);
  }

  // Ask the server which of its handshake rules refuses this connection (app/explain.py).
  async explain(path, subprotocols) {
    const query = new URLSearchParams({ path, subprotocols: subprotocols.join(","), origin: location.origin });
    try {
      const response = await fetch(`/handshake-check?${query}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const verdict = await response.json();
      const message = verdict.ok
        ? `why: ${verdict.reason}`
        : `why: refused by the ${verdict.rule} rule (${verdict.status}): ${verdict.reason}`;
      this.log.add({ kind: "explain", summary: message });
      this.onError(message);
    } catch (err) {
      const message = `why: the server at ${location.host} is not answering (${err.message}): is it running?`;
      this.log.add({ kind: "explain", summary: message });
      this.onError(message);
    }
  }

  // A trace token bound to this browser's session, and the socket its records arrive on.
  async openTrace(scheme) {
    const response = await fetch("/trace/token", { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
    if (!response.ok) throw new Error(`trace token: HTTP ${response.status}`);
    const { token } = await response.json();
    const listener = new WebSocket(`${scheme}://${location.host}/ws/trace/${token}/`);
    this.trace = { token, listener };
    await new Promise((resolve, reject) => {
      listener.addEventListener("open", resolve, { once: true });
      listener.addEventListener("close", () => reject(new Error("the trace socket was refused")), { once: true });
    });
    listener.addEventListener("message", (msg) => this.log.server(JSON.parse(msg.data)));
    return this.trace;
  }

  stopTrace() {
    if (this.trace) {
      const { listener } = this.trace;
      if (listener.readyState <= WebSocket.OPEN) listener.close(1000, "the connection ended");
    }
    this.trace = null;
  }
}
