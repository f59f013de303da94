// The demo page: a WebSocket test client for the echo consumers.
// Every event is logged with a timestamp; echoed content is only ever set as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("client");
  const maxBytes = Number(root.dataset.maxBytes);
  const log = $("log");
  const state = $("state");
  const sendControls = ["send-text", "send-binary", "binary-file", "send-oversize", "close"].map($);

  let socket = null;
  let measureRtt = true;
  let traceSocket = null;
  let traceStart = null;
  // The echo keeps order, so the oldest pending send is the one each echo answers.
  const pending = [];

  const CLOSE_NAMES = {
    1000: "Normal Closure", 1001: "Going Away", 1002: "Protocol Error",
    1003: "Unsupported Data", 1005: "No Status Received", 1006: "Abnormal Closure",
    1007: "Invalid Payload", 1008: "Policy Violation", 1009: "Message Too Big",
    1011: "Internal Error", 1012: "Service Restart", 1013: "Try Again Later",
  };
  function closeName(code) {
    if (CLOSE_NAMES[code]) return CLOSE_NAMES[code];
    if (code >= 4000 && code <= 4999) return "application";
    if (code >= 3000 && code <= 3999) return "registered";
    return "unknown";
  }

  function timestamp() {
    const now = new Date();
    return now.toLocaleTimeString([], { hour12: false }) + "." + String(now.getMilliseconds()).padStart(3, "0");
  }

  function preview(text, limit = 200) {
    return text.length > limit ? text.slice(0, limit) + "\u2026" : text;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;  // never innerHTML: echoed content is text
    return node;
  }

  function append(item) {
    log.append(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }

  // A browser-side event: what the WebSocket API reported.
  function addEntry(kind, summary, detail) {
    const item = el("li", "entry side-browser entry-" + kind);
    item.dataset.kind = kind;
    item.dataset.side = "browser";
    const cell = el("div", "cell");
    cell.append(el("time", "", timestamp()), el("span", "kind", kind), el("span", "summary", summary));
    if (detail !== undefined) cell.append(el("pre", "detail", detail));
    item.append(cell);
    return append(item);
  }

  // A server-side record: an ASGI event the consumer received or sent. Click to see every field.
  function addServerEntry(record) {
    const item = el("li", "entry side-server entry-" + record.direction);
    item.dataset.kind = "server-" + record.direction;
    item.dataset.side = "server";
    item.dataset.type = record.type;
    if (traceStart === null) traceStart = record.t;
    const handler = record.handler ? ` \u2192 ${record.handler}()` : "";
    const details = el("details");
    const summary = el("summary");
    summary.append(
      el("time", "", `+${((record.t - traceStart) * 1000).toFixed(1)} ms`),
      el("span", "kind", record.direction),
      el("span", "summary", `${record.type}${handler}`),
    );
    const full = { type: record.type, ...record.fields };
    if (record.scope) full.scope = record.scope;
    details.append(summary, el("pre", "detail", JSON.stringify(full, null, 2)));
    const cell = el("div", "cell");
    cell.append(details);
    item.append(cell);
    return append(item);
  }

  const stats = { sentMessages: 0, sentBytes: 0, receivedMessages: 0, receivedBytes: 0, since: null };
  function resetStats() {
    Object.assign(stats, { sentMessages: 0, sentBytes: 0, receivedMessages: 0, receivedBytes: 0, since: null });
    showStats();
  }
  function showStats() {
    const since = stats.since ? `connected since ${stats.since.toLocaleTimeString([], { hour12: false })}` : "not connected";
    $("stats").textContent =
      `sent ${stats.sentMessages} msgs, ${stats.sentBytes} B \u00b7 received ${stats.receivedMessages} msgs, ` +
      `${stats.receivedBytes} B \u00b7 ${since}`;
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // Ask for a trace token bound to this browser's session, and listen on its trace socket.
  async function openTrace(scheme) {
    const response = await fetch("/trace/token", { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
    if (!response.ok) throw new Error(`trace token: HTTP ${response.status}`);
    const { token } = await response.json();
    const listener = new WebSocket(`${scheme}://${location.host}/ws/trace/${token}/`);
    await new Promise((resolve, reject) => {
      listener.addEventListener("open", resolve, { once: true });
      listener.addEventListener("close", () => reject(new Error("the trace socket was refused")), { once: true });
    });
    listener.addEventListener("message", (msg) => addServerEntry(JSON.parse(msg.data)));
    return { token, listener };
  }

  function setState(name) {
    state.textContent = name;
    state.className = "state state-" + name;
    const open = name === "open";
    sendControls.forEach((el) => { el.disabled = !open; });
    $("connect").disabled = name === "connecting" || name === "open" || name === "closing";
  }

  function socketPath(mode, consumer) {
    if (mode === "room") {
      return `/ws/broadcast/${consumer}/${encodeURIComponent($("room").value.trim())}/`;
    }
    return `/ws/echo/${consumer}/`;
  }

  async function connect(event) {
    event.preventDefault();
    const mode = $("mode").value;
    const consumer = $("consumer").value;
    const offered = $("subprotocols").value.split(",").map((s) => s.trim()).filter(Boolean);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = `${scheme}://${location.host}${socketPath(mode, consumer)}`;
    if (traceSocket) traceSocket.close(1000, "a new connection");
    traceSocket = null;
    traceStart = null;
    const traced = $("trace").checked;
    log.classList.toggle("traced", traced);
    $("columns").hidden = !traced;
    resetStats();
    if (traced) {
      setState("connecting");
      try {
        const trace = await openTrace(scheme);
        traceSocket = trace.listener;
        url += `?trace=${encodeURIComponent(trace.token)}`;
      } catch (err) {
        addEntry("error", `cannot trace: ${err.message}`);
        setState("closed");
        return;
      }
    }
    // Round-trip times only mean something for echo: in a room, others' messages arrive too.
    measureRtt = mode === "echo";
    pending.length = 0;
    try {
      socket = new WebSocket(url, offered);
    } catch (err) {
      addEntry("error", `cannot connect: ${err.message}`);
      return;
    }
    socket.binaryType = "arraybuffer";
    setState("connecting");
    // The trace token stays out of the log, as it does in the server's scope summary.
    const shown = url.replace(/trace=[^&]+/, "trace=(token)");
    addEntry("connecting", shown + (offered.length ? ` offering ${offered.join(", ")}` : " with no subprotocol"));
    const ws = socket;
    ws.addEventListener("open", () => {
      setState("open");
      stats.since = new Date();
      showStats();
      const where = mode === "room" ? ` in room ${$("room").value.trim()}` : "";
      addEntry("open", `connected to the ${consumer} consumer${where}; subprotocol: ${ws.protocol || "(none)"}`);
    });
    ws.addEventListener("message", (msg) => {
      const sentAt = measureRtt ? pending.shift() : undefined;
      const rtt = sentAt === undefined ? "" : ` in ${(performance.now() - sentAt).toFixed(1)} ms`;
      const bytes = typeof msg.data === "string" ? new TextEncoder().encode(msg.data).length : msg.data.byteLength;
      stats.receivedMessages += 1;
      stats.receivedBytes += bytes;
      showStats();
      if (typeof msg.data === "string") {
        addEntry("received", `text, ${bytes} bytes${rtt}`, preview(msg.data));
      } else {
        addEntry("received", `binary, ${bytes} bytes${rtt}`);
      }
    });
    ws.addEventListener("error", () => {
      addEntry("error", "the connection reported an error (the close event below says more)");
    });
    ws.addEventListener("close", (ev) => {
      if (socket === ws) socket = null;
      setState("closed");
      stats.since = null;
      showStats();
      const reason = ev.reason ? ` reason "${ev.reason}"` : " no reason";
      addEntry("close", `code ${ev.code} (${closeName(ev.code)})${reason}, wasClean ${ev.wasClean}`);
    });
  }

  function send(data, summary, detail) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      addEntry("error", "not connected");
      return;
    }
    if (measureRtt) pending.push(performance.now());
    socket.send(data);
    stats.sentMessages += 1;
    stats.sentBytes += typeof data === "string" ? new TextEncoder().encode(data).length : data.byteLength;
    showStats();
    addEntry("sent", summary, detail);
  }

  function sendText(event) {
    event.preventDefault();
    const text = $("text").value;
    send(text, `text, ${new TextEncoder().encode(text).length} bytes`, preview(text));
    $("text").select();
  }

  function patternBytes(size) {
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i++) data[i] = i & 0xff;
    return data;
  }

  function sendBinary(event) {
    event.preventDefault();
    const size = Math.max(0, Number($("binary-size").value) || 0);
    send(patternBytes(size), `binary, ${size} bytes`);
  }

  async function sendFile() {
    const file = $("binary-file").files[0];
    if (!file) return;
    const data = await file.arrayBuffer();
    send(data, `binary, ${data.byteLength} bytes from file ${file.name}`);
    $("binary-file").value = "";
  }

  function sendOversize() {
    send(patternBytes(maxBytes + 1), `binary, ${maxBytes + 1} bytes (one over the limit)`);
  }

  function closeSocket(event) {
    event.preventDefault();
    if (!socket) return;
    const code = Number($("close-code").value);
    const reason = $("close-reason").value;
    try {
      socket.close(code, reason);
    } catch (err) {
      addEntry("error", `cannot close: ${err.message}`);
      return;
    }
    setState("closing");
    addEntry("closing", `code ${code} (${closeName(code)})` + (reason ? ` reason "${reason}"` : ""));
  }

  $("connect-form").addEventListener("submit", connect);
  $("close-form").addEventListener("submit", closeSocket);
  $("text-form").addEventListener("submit", sendText);
  $("binary-form").addEventListener("submit", sendBinary);
  $("binary-file").addEventListener("change", sendFile);
  $("send-oversize").addEventListener("click", sendOversize);
  $("clear-log").addEventListener("click", () => log.replaceChildren());
  $("mode").addEventListener("change", () => { $("room-label").hidden = $("mode").value !== "room"; });
  setState("closed");
})();
