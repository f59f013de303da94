// Room mode's "Members" panel: who is in the room and how many (issue 31, "The page"). The
// model is rooms.js' Presence, kept current by the welcome and each join and leave frame; this
// is only its view. A frame marks it dirty, and it is drawn at most once an animation frame:
// a join storm of thousands of frames a second costs one draw a frame, not one per frame. The
// list is drawn only when its first SHOWN names may have changed (Presence.listVersion), and
// never more than SHOWN names ("and N more" says the rest). Nothing here reads layout.
//
// A screen reader hears the count politely, at most every ANNOUNCE_EVERY ms (a storm is one
// announcement, not thousands), from a status region of its own.

import { el } from "./format.js";
import { describeMember } from "./rooms.js";

export const SHOWN = 100;  // names drawn at most
const ANNOUNCE_EVERY = 2000;  // ms between announcements of the count

const plural = (n, one, many) => `${n.toLocaleString("en")} ${n === 1 ? one : many}`;

// Writing the same text again still replaces the node's text, and restyles it: skip that.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

export class MemberList {
  // count: the visible count; list: the <ul>; more: "and N more"; note: why there is no list;
  // announcer: a polite status region.
  constructor({ count, list, more, note, announcer }) {
    Object.assign(this, { count, list, more, note, announcer });
    this.presence = null;
    this.self = null;
    this.room = "";
    this.drawnList = -1;  // the listVersion drawn
    this.frame = 0;
    this.announced = { at: -Infinity, text: "", timer: 0 };
  }

  // presence: a rooms.js Presence (or null: not in a room, or no presence yet); self: this
  // member's name; room: the room's name; why: what to say when there is no presence.
  show(presence, self, room, why) {
    if (presence !== this.presence) this.drawnList = -1;
    Object.assign(this, { presence, self, room, why });
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    const presence = this.presence;
    if (!presence) {
      setText(this.count, "");
      this.more.hidden = true;
      this.note.hidden = false;
      setText(this.note, this.why);
      if (this.list.childElementCount) this.list.replaceChildren();
      this.list.hidden = true;
      this.drawnList = -1;
      return;
    }
    const text = plural(presence.count, "member", "members");
    setText(this.count, text);
    this.note.hidden = true;
    this.list.hidden = false;
    if (this.drawnList !== presence.listVersion) {
      this.drawnList = presence.listVersion;
      const items = document.createDocumentFragment();
      for (const who of presence.first(SHOWN)) {
        const item = el("li", "member", describeMember(who));
        if (who.member === this.self) {
          item.classList.add("you");
          item.append(el("span", "you-mark", " (you)"));
        }
        items.append(item);
      }
      this.list.replaceChildren(items);
    }
    const rest = presence.count - Math.min(presence.members.size, SHOWN);
    this.more.hidden = rest <= 0;
    setText(this.more, rest > 0 ? `and ${plural(rest, "more", "more")}` : "");
    this.announce(`${text} in room ${this.room}`);
  }

  announce(text) {
    const state = this.announced;
    state.text = text;
    if (state.timer) return;
    const wait = Math.max(0, state.at + ANNOUNCE_EVERY - performance.now());
    state.timer = setTimeout(() => {
      if (this.announcer.textContent !== state.text) this.announcer.textContent = state.text;
      Object.assign(state, { at: performance.now(), timer: 0 });
    }, wait);
  }
}
