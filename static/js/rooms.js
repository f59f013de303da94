// rooms.v1 on the page's side (docs: the Rooms page; /work's spec: issue 30). The server sends
// JSON text frames: a welcome, then each room message with its offset. This module reads them,
// keeps the member's position (the epoch:offset a reconnect resumes from), counts what a resume
// recovered, and names any gap or duplicate: the server promises none, so one is a bug to show.
// No DOM and no socket: each method takes a frame and returns the log entries to add, so the
// cost per message is one JSON.parse and a few comparisons.

import { utf8Length } from "./format.js";

export const PROTOCOL = "rooms.v1";
const EPOCH = /^[A-Za-z0-9_-]{1,64}$/;
const PREVIEW_BYTES = 4096;  // the log keeps the first 4 KiB of a binary message, as for echoes

// What the page offers: rooms.v1 first when it speaks it, then what the user typed.
export function offer(typed, speak) {
  return speak ? [PROTOCOL, ...typed.filter((name) => name !== PROTOCOL)] : typed;
}

// The query that resumes from a position: `since=<epoch>:<offset>`.
export function sinceQuery(position) {
  return `since=${position.epoch}:${position.offset}`;
}

const isOffset = (value) => Number.isSafeInteger(value) && value >= 0;
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

// Standard base64 to bytes; null when it is not base64.
export function decodeBase64(text) {
  let binary;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// One rooms.v1 connection. `since` is the position it resumed from ({epoch, offset}), or null
// for a fresh join. `position` is what the next connection resumes from: since until the
// welcome says otherwise, then the offset of each message as it arrives.
export class RoomSession {
  constructor(room, since) {
    this.room = room;
    this.since = since;
    this.position = since ? { ...since } : null;
    this.member = null;
    this.epoch = null;
    this.replay = null;  // after a recovered resume: {expected, got, from, until}
  }

  // data: a received frame (string or ArrayBuffer); size: its bytes. Returns log entries.
  receive(data, size) {
    if (typeof data !== "string") {
      return [violation(`the server sent a binary frame of ${size} bytes (rooms.v1 is JSON text only)`)];
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return [violation("the server sent a frame that is not JSON", data)];
    }
    if (frame?.type === "message") return this.message(frame);
    if (frame?.type === "welcome") return this.welcome(frame);
    return [violation(`the server sent a frame of unknown type ${JSON.stringify(frame?.type)}`, data)];
  }

  welcome(frame) {
    if (this.epoch !== null) return [violation("the server sent a second welcome", JSON.stringify(frame))];
    const { room, member, epoch, offset, recovered } = frame;
    if (typeof member !== "string" || !EPOCH.test(epoch ?? "") || !isOffset(offset)) {
      return [violation("the server sent a welcome without a member, an epoch and an offset", JSON.stringify(frame))];
    }
    this.member = member;
    this.epoch = epoch;
    const entries = [];
    const said = recovered === undefined ? "" : `; recovered: ${recovered}`;
    entries.push({
      kind: "welcome",
      summary: `welcome to room ${room}: you are member ${member}; epoch ${epoch}, offset ${offset}${said}`,
    });
    if (room !== this.room) entries.push(violation(`the server sent a welcome to room ${JSON.stringify(room)}, not ${this.room}`));
    const since = this.since;
    if (!since) {
      if (recovered !== undefined) entries.push(violation("the welcome of a join that did not resume says recovered"));
      this.position = { epoch, offset };
      return entries;
    }
    if (recovered === true && epoch === since.epoch) {
      // Exactly the messages after since up to the welcome's offset come next, then live ones.
      const expected = Math.max(0, offset - since.offset);
      this.replay = { expected, got: 0, from: since.offset + 1, until: offset };
      if (expected === 0) entries.push(this.resumed());
      return entries;
    }
    if (recovered === true) entries.push(violation(`the welcome says recovered: true under a new epoch (was ${since.epoch})`));
    else if (recovered !== false) entries.push(violation("the welcome of a resume does not say recovered"));
    this.position = { epoch, offset };
    const why = epoch !== since.epoch
      ? `the room's history is gone (epoch ${since.epoch} is now ${epoch})`
      : `the room's history no longer holds offset ${since.offset + 1}`;
    entries.push({
      kind: "lost",
      summary: `not recovered: history lost: ${why}; what was sent after ${since.epoch}:${since.offset} while you were away is not coming; live from offset ${offset + 1}`,
    });
    return entries;
  }

  message(frame) {
    if (this.epoch === null) return [violation("the server sent a message before the welcome", JSON.stringify(frame))];
    const { offset, from } = frame;
    if (!isOffset(offset) || typeof from !== "string") {
      return [violation("the server sent a message without an offset and a sender", JSON.stringify(frame))];
    }
    const entries = [];
    const next = this.position.offset + 1;
    if (offset > next) {
      entries.push(violation(`a gap: ${offset - next === 1 ? `offset ${next}` : `offsets ${next}-${offset - 1}`} never arrived`));
    } else if (offset < next) {
      entries.push(violation(`a duplicate: offset ${offset} again (the last was ${next - 1})`));
    }
    const replay = this.replay;
    if (replay && offset > replay.until) entries.push(this.resumed());  // the live ones began early
    const who = from === this.member ? "you" : from;
    let content;
    if (typeof frame.text === "string") {
      content = { summary: `text, ${utf8Length(frame.text)} bytes`, text: frame.text };
    } else if (typeof frame.bytes === "string" && (content = decodeBase64(frame.bytes))) {
      const size = content.length;
      content = { summary: `binary, ${size} bytes`, bytes: content.subarray(0, PREVIEW_BYTES), size };
    } else {
      entries.push(violation(`the server sent a message at offset ${offset} with neither text nor base64 bytes`, JSON.stringify(frame)));
      content = { summary: "no content" };
    }
    entries.push({ kind: "received", offset, from: who, ...content, summary: `offset ${offset} from ${who}: ${content.summary}` });
    if (offset >= next) this.position = { epoch: this.epoch, offset };
    if (this.replay && offset <= this.replay.until) {
      this.replay.got += 1;
      if (this.replay.got >= this.replay.expected) entries.push(this.resumed());
    }
    return entries;
  }

  // The resume's summary, once its replay is complete (or cut short by a live message).
  resumed() {
    const { expected, got, from, until } = this.replay;
    this.replay = null;
    const span = expected ? ` (offsets ${from}-${until})` : "";
    if (got >= expected) {
      return { kind: "resumed", summary: `resumed: ${plural(got, "missed message", "missed messages")} recovered${span}` };
    }
    const short = `resumed, but only ${got} of ${plural(expected, "missed message", "missed messages")} recovered${span} before live ones`;
    return { kind: "error", violation: true, summary: `rooms.v1: ${short}` };
  }
}

// The server broke the contract: shown as an error (and in the alert line), never silently.
function violation(what, text) {
  return { kind: "error", violation: true, summary: `rooms.v1: ${what}`, ...(text !== undefined && { text }) };
}
