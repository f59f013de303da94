// rooms.v1 on the page's side (docs: the Rooms page; /work's spec: issue 30). The server sends
// JSON text frames: a welcome, then each room message with its offset. This module reads them,
// keeps the member's position (the epoch:offset a reconnect resumes from), counts what a resume
// recovered, and names any gap or duplicate: the server promises none, so one is a bug to show.
// No DOM and no socket: each method takes a frame and returns the log entries to add, so the
// cost per message is one JSON.parse and a few comparisons.
//
// Presence (issue 31): the welcome's `presence` ({count, members: [{member, user}]}) is who was
// here when this member joined; `join` and `leave` frames about the other members keep it
// current. The server counts one name with several connections once, sends a member none of
// its own, and stops sending them past ROOM_PRESENCE_EVENTS_MAX members (then only the
// welcome's count is known); a frame may be dropped under load (best effort, as Phoenix's
// diffs). So Presence applies each frame idempotently and never calls a mismatch a breach.

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
const isEntry = (who) => typeof who?.member === "string" && who.member !== "" &&
  (who.user === null || who.user === undefined || typeof who.user === "string");
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

// Who is in the room, as this member knows it: `count` is the whole room (the welcome's, then
// one more or less per join and leave), `members` the names known (the welcome lists the first
// ROOM_PRESENCE_LIST; joins add to them), in the order they became known. `version` changes
// with anything shown; `listVersion` only when the first `shown` names may have changed, so a
// view redraws its list only then.
export class Presence {
  constructor(count, members, shown = 100) {
    this.members = new Map();  // member name -> user (a username, or null)
    for (const who of members) this.members.set(who.member, who.user ?? null);
    this.count = Math.max(count, this.members.size);
    this.shown = shown;
    this.version = 0;
    this.listVersion = 0;
  }

  // True when it changed anything: a join of a name already here changes nothing.
  join(who) {
    if (this.members.has(who.member)) return false;
    this.members.set(who.member, who.user ?? null);
    this.count = Math.max(this.count + 1, this.members.size);
    if (this.members.size <= this.shown) this.listVersion++;
    this.version++;
    return true;
  }

  // A name not listed may still be counted (the welcome lists only the first ones); a leave
  // that would take the count below the names known, or below 1 (this member), is ignored.
  leave(who) {
    if (this.members.delete(who.member)) {
      this.count = Math.max(this.count - 1, this.members.size, 1);
      this.listVersion++;
      this.version++;
      return true;
    }
    if (this.count > Math.max(this.members.size, 1)) {
      this.count--;
      this.version++;
      return true;
    }
    return false;
  }

  // The first `limit` members, as [{member, user}], in the order they became known.
  first(limit = this.shown) {
    const out = [];
    for (const [member, user] of this.members) {
      if (out.length >= limit) break;
      out.push({ member, user });
    }
    return out;
  }
}

// "alice", "alice (user bob)": a member's name, and the Django user behind it when it differs.
export function describeMember(who) {
  return who.user && who.user !== who.member ? `${who.member} (user ${who.user})` : who.member;
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
    this.presence = null;  // who is here (a Presence), once a welcome carried it
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
    if (frame?.type === "join" || frame?.type === "leave") return this.presenceEvent(frame, data);
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
    if (frame.presence !== undefined) entries.push(this.snapshot(frame.presence, JSON.stringify(frame)));
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

  // The welcome's presence: {count, members: [{member, user}]}.
  snapshot(presence, text) {
    const { count, members } = presence ?? {};
    if (!isOffset(count) || !Array.isArray(members) || !members.every(isEntry)) {
      return violation("the welcome's presence is not a count and a list of members", text);
    }
    this.presence = new Presence(count, members);
    const listed = members.length < count ? `; the first ${members.length} listed` : "";
    return { kind: "presence", summary: `${plural(count, "member", "members")} in room ${this.room}, you included${listed}` };
  }

  // A join or leave of another member.
  presenceEvent(frame, data) {
    if (this.epoch === null) return [violation(`the server sent a ${frame.type} before the welcome`, data)];
    if (!isEntry(frame.member)) return [violation(`the server sent a ${frame.type} without a member`, data)];
    if (!this.presence) this.presence = new Presence(1, this.member ? [{ member: this.member, user: null }] : []);
    const presence = this.presence;
    const joined = frame.type === "join";
    const changed = joined ? presence.join(frame.member) : presence.leave(frame.member);
    const here = changed ? `; ${plural(presence.count, "member", "members")}` : joined ? " (already here)" : " (was not here)";
    return [{
      kind: "presence",
      member: frame.member.member,
      summary: `${describeMember(frame.member)} ${joined ? "joined" : "left"}${here}`,
    }];
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
