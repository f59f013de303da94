// The event log: a model (every entry, up to KEEP) and a view (the newest SHOWN that match the
// search and filter). Entries are appended to the DOM once per animation frame, in one batch,
// and the view scrolls only while the reader is at the bottom: a reader scrolled up keeps their
// place and sees "N new" instead. Writing scrollTop after every entry forced a layout each time
// (2,000 entries into a log of 4,000 took 11.6 s); one batch a frame takes milliseconds.
//
// Nothing here reads layout after changing the DOM. Reading scrollHeight right after the
// append (as it was) forced a layout of the batch in script, and rendering laid it out again
// (0.5 s of a 5,000-message burst). The scroll to the newest entry is made by a ResizeObserver
// on the list instead: its callback runs in the same frame, after rendering's own layout and
// before paint, when reading scrollHeight costs nothing. While the view follows the newest
// entry, scroll anchoring is off (class "following"): an anchor would hold the view on the old
// entries when those above are trimmed, and that move would read as the reader's scroll.

import { el, hexDump, prettyJson, timestamp } from "./format.js";

const SHOWN = 500;  // entries in the DOM at most; older matches are counted, not drawn
const BATCH = 100;  // entries drawn in one animation frame at most
const KEEP = 20000;  // entries kept for search, filter and export (at least); older ones are dropped
const DROP = 1000;  // ... this many at a time: dropping one a message moved the 20,000 others each time
const PREVIEW = 200;  // characters of text shown before "show all"
const ANNOUNCE_EVERY = 2000;  // ms between screen-reader summaries of new messages

const FILTERS = {
  all: () => true,
  sent: (e) => e.kind === "sent",
  received: (e) => e.kind === "received",
  server: (e) => e.side === "server",
  events: (e) => e.side === "browser" && e.kind !== "sent" && e.kind !== "received",
  presence: (e) => e.kind === "presence",
};

export class Log {
  constructor({ scroller, list, olderNote, newButton, announcer, onFlush }) {
    Object.assign(this, { scroller, list, olderNote, newButton, announcer, onFlush });
    this.entries = [];
    this.dropped = 0;  // entries dropped from the model (KEEP)
    this.matching = 0;  // entries in the model that match the search and filter
    this.backlog = [];  // entries that match, waiting for a frame to draw them
    this.arrived = 0;  // entries that joined the backlog since the last frame
    this.frame = 0;
    this.nextId = 1;
    this.atBottom = true;
    this.stick = false;  // entries were appended while following: scroll when the list has grown
    this.pinnedTop = 0;  // scrollTop after the last scroll: a smaller one is the reader's doing
    this.unseen = 0;
    this.filter = { kind: "all", text: "" };
    this.traceStart = null;
    this.announced = { at: 0, count: 0, timer: 0 };
    scroller.classList.add("following");
    new ResizeObserver(() => this.stickToBottom()).observe(list);
    scroller.addEventListener("scroll", () => this.noteScroll(), { passive: true });
    newButton.addEventListener("click", () => this.jumpToNewest());
  }

  // --- the model -------------------------------------------------------------------------
  // side: "browser" | "server"; kind: sent, received, open, close, error, ...; summary: one
  // line; text (string) or bytes (Uint8Array, the first 4 KiB) for message content.
  add(entry) {
    entry.id = this.nextId++;
    entry.side = entry.side || "browser";
    entry.time = entry.time || timestamp();
    this.entries.push(entry);
    if (this.matches(entry)) {
      this.matching++;
      this.backlog.push(entry);
      this.arrived++;
    }
    if (this.entries.length >= KEEP + DROP) {
      const removed = this.entries.splice(0, this.entries.length - KEEP);
      this.dropped += removed.length;
      for (const old of removed) if (this.matches(old)) this.matching--;
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    return entry;
  }

  server(record) {
    if (this.traceStart === null) this.traceStart = record.t;
    const handler = record.handler ? ` \u2192 ${record.handler}()` : "";
    const full = { type: record.type, ...record.fields };
    if (record.scope) full.scope = record.scope;
    return this.add({
      side: "server",
      kind: record.direction,
      type: record.type,
      time: `+${((record.t - this.traceStart) * 1000).toFixed(1)} ms`,
      summary: `${record.type}${handler}`,
      record: full,
    });
  }

  clear() {
    this.entries = [];
    this.backlog = [];
    this.dropped = this.matching = this.unseen = this.arrived = 0;
    this.traceStart = null;
    this.list.replaceChildren();
    this.showNotes();
  }

  setFilter(filter) {
    this.filter = { ...this.filter, ...filter };
    this.rebuild();
  }

  matches(entry) {
    if (!FILTERS[this.filter.kind](entry)) return false;
    const needle = this.filter.text.toLowerCase();
    if (!needle) return true;
    return [entry.summary, entry.text, entry.kind, entry.type].some(
      (field) => typeof field === "string" && field.toLowerCase().includes(needle),
    );
  }

  toJSON() {
    return this.entries.map(({ id, side, kind, time, summary, text, bytes, size, record, type }) => ({
      id, side, kind, time, summary,
      ...(type !== undefined && { type }),
      ...(text !== undefined && { text }),
      ...(bytes !== undefined && { size, bytes_hex: Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("") }),
      ...(record !== undefined && { record }),
    }));
  }

  // --- the view --------------------------------------------------------------------------
  // Each frame draws at most BATCH entries, so a burst never makes a long task; a backlog
  // longer than SHOWN keeps only its newest SHOWN (the older would be trimmed at once anyway).
  // In a burst (more arrived since the last frame than a frame draws) a reader following the
  // newest entry sees the newest BATCH at once, on a fresh list: drawing the backlog in order
  // kept the view up to SHOWN entries behind and took 5 frames to catch up after the burst
  // (5,000 pushes at 10,000/s: the last drawn 0.5-0.9 s after it left the server, was 0.8-2.2 s).
  flush() {
    this.frame = 0;
    const burst = this.atBottom && this.arrived > BATCH;
    this.arrived = 0;
    if (burst || this.backlog.length > SHOWN) {
      this.backlog = this.backlog.slice(burst ? -BATCH : -SHOWN);
      this.list.replaceChildren();
    }
    const drawn = this.backlog.splice(0, BATCH);
    if (drawn.length) {
      const batch = document.createDocumentFragment();
      for (const entry of drawn) batch.append(render(entry));
      this.list.append(batch);
      for (let excess = this.list.childElementCount - SHOWN; excess > 0; excess--) {
        this.list.firstElementChild.remove();
      }
      this.afterAppend(drawn);
    }
    if (this.backlog.length && !this.frame) this.frame = requestAnimationFrame(() => this.flush());
    this.onFlush();
  }

  rebuild() {
    const matching = this.entries.filter((e) => this.matches(e));
    this.backlog = matching.slice(-SHOWN);
    this.list.replaceChildren();
    this.unseen = this.arrived = 0;  // drawn in order, all SHOWN: not a burst
    this.follow(true);
    this.matching = matching.length;
    this.flush();
    this.showNotes();
  }

  afterAppend(fresh) {
    if (this.atBottom) {
      this.stick = true;  // scrolled by stickToBottom after layout, not here: reading it now forces it
    } else {
      this.unseen += fresh.length;
    }
    this.showNotes();
    this.announce(fresh.filter((e) => e.kind === "received").length);
  }

  // Called after layout (ResizeObserver), so scrollHeight is read for free.
  stickToBottom() {
    if (!this.stick) return;
    this.stick = false;
    if (this.atBottom) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  follow(following) {
    if (following === this.atBottom) return;
    this.atBottom = following;
    this.scroller.classList.toggle("following", following);
  }

  showNotes() {
    const hidden = this.matching - this.list.childElementCount;
    const note = [];
    if (hidden > 0) note.push(`${hidden} older ${hidden === 1 ? "entry" : "entries"} not shown (search, filter and export reach them)`);
    if (this.dropped) note.push(`${this.dropped} oldest dropped (the log keeps the newest ${KEEP})`);
    this.olderNote.hidden = note.length === 0;
    this.olderNote.textContent = note.join("; ");
    this.newButton.hidden = this.unseen === 0;
    this.newButton.textContent = `${this.unseen} new \u2193`;
  }

  // Only the reader moves the view up: content that grows under a pinned view (an entry
  // opened, fonts loaded) does not unpin it.
  noteScroll() {
    const box = this.scroller;
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    if (nearBottom) this.follow(true);
    else if (box.scrollTop < this.pinnedTop - 4) this.follow(false);
    this.pinnedTop = box.scrollTop;
    if (this.atBottom && this.unseen) {
      this.unseen = 0;
      this.showNotes();
    }
  }

  jumpToNewest() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.follow(true);
    this.unseen = 0;
    this.showNotes();
    this.scroller.focus();
  }

  // A screen reader hears a summary at most every ANNOUNCE_EVERY ms, never every message.
  announce(received) {
    this.announced.count += received;
    if (!this.announced.count || this.announced.timer) return;
    const wait = Math.max(0, this.announced.at + ANNOUNCE_EVERY - performance.now());
    this.announced.timer = setTimeout(() => {
      const n = this.announced.count;
      this.announcer.textContent = `${n} new ${n === 1 ? "message" : "messages"} received`;
      Object.assign(this.announced, { at: performance.now(), count: 0, timer: 0 });
    }, wait);
  }
}

function render(entry) {
  const item = el("li", `entry side-${entry.side} entry-${entry.kind}`);
  item.dataset.kind = entry.side === "server" ? `server-${entry.kind}` : entry.kind;
  item.dataset.side = entry.side;
  item.dataset.id = entry.id;
  if (entry.type) item.dataset.type = entry.type;
  const cell = el("div", "cell");
  if (entry.side === "server") {
    const summary = el("summary");
    summary.append(el("time", "", entry.time), el("span", "kind", entry.kind), el("span", "summary", entry.summary));
    cell.append(lazy(summary, () => el("pre", "detail", JSON.stringify(entry.record, null, 2))));
  } else {
    cell.append(el("time", "", entry.time), el("span", "kind", entry.kind), el("span", "summary", entry.summary));
    if (entry.text !== undefined) cell.append(...textViews(entry.text));
    if (entry.bytes !== undefined && entry.bytes.length) cell.append(toggle("hex", () => hexDump(entry.bytes), "hex"));
  }
  item.append(cell);
  return item;
}

function textViews(text) {
  const views = [];
  if (text.length > PREVIEW) {
    const summary = el("summary", "", `${text.slice(0, PREVIEW)}\u2026 (show all ${text.length} characters)`);
    views.push(lazy(summary, () => el("pre", "full", text), "detail long"));
  } else {
    views.push(el("pre", "detail", text));
  }
  const first = text.trimStart()[0];
  if (first === "{" || first === "[") {
    const pretty = prettyJson(text);
    if (pretty !== null) views.push(toggle("JSON", () => pretty, "json"));
  }
  return views;
}

function toggle(label, content, className) {
  return lazy(el("summary", "", label), () => el("pre", "", content()), `view view-${className}`);
}

// A <details> whose content is made when it is first opened: most entries are never opened,
// and thousands of hidden <pre> elements cost memory and style work.
function lazy(summary, content, className) {
  const details = el("details", className);
  details.append(summary);
  details.addEventListener("toggle", () => {
    if (details.open && details.childElementCount === 1) details.append(content());
  });
  return details;
}
