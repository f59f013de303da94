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

  function addEntry(kind, summary, detail) {
    const item = document.createElement("li");
    item.className = "entry entry-" + kind;
    item.dataset.kind = kind;
    const time = document.createElement("time");
    time.textContent = timestamp();
    const label = document.createElement("span");
    label.className = "kind";
    label.textContent = kind;
    const text = document.createElement("span");
    text.className = "summary";
    text.textContent = summary;
    item.append(time, label, text);
    if (detail !== undefined) {
      const body = document.createElement("pre");
      body.className = "detail";
      body.textContent = detail;
      item.append(body);
    }
    log.append(item);
    log.scrollTop = log.scrollHeight;
    return item;
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

  function connect(event) {
    event.preventDefault();
    const mode = $("mode").value;
    const consumer = $("consumer").value;
    const offered = $("subprotocols").value.split(",").map((s) => s.trim()).filter(Boolean);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}${socketPath(mode, consumer)}`;
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
    addEntry("connecting", `${url}` + (offered.length ? ` offering ${offered.join(", ")}` : " with no subprotocol"));
    const ws = socket;
    ws.addEventListener("open", () => {
      setState("open");
      const where = mode === "room" ? ` in room ${$("room").value.trim()}` : "";
      addEntry("open", `connected to the ${consumer} consumer${where}; subprotocol: ${ws.protocol || "(none)"}`);
    });
    ws.addEventListener("message", (msg) => {
      const sentAt = measureRtt ? pending.shift() : undefined;
      const rtt = sentAt === undefined ? "" : ` in ${(performance.now() - sentAt).toFixed(1)} ms`;
      if (typeof msg.data === "string") {
        const bytes = new TextEncoder().encode(msg.data).length;
        addEntry("received", `text, ${bytes} bytes${rtt}`, preview(msg.data));
      } else {
        addEntry("received", `binary, ${msg.data.byteLength} bytes${rtt}`);
      }
    });
    ws.addEventListener("error", () => {
      addEntry("error", "the connection reported an error (the close event below says more)");
    });
    ws.addEventListener("close", (ev) => {
      if (socket === ws) socket = null;
      setState("closed");
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
