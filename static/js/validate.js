// What the page checks before it sends anything: the same rules the server applies, so that a
// mistake is named at once instead of surfacing as a 1006 from the browser. Each function
// returns an error message, or null when the input is fine.

// RFC 6455 4.1: a subprotocol is an HTTP token (RFC 7230 3.2.6); the WebSocket constructor
// throws a SyntaxError for anything else.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// app/rooms.py: ROOM_NAME and MAX_ROOM_NAME_LENGTH.
const ROOM = /^[A-Za-z0-9_.-]+$/;
export const MAX_ROOM_LENGTH = 80;
// The page's own bound on a generated binary message: the server's limit is far lower, and
// larger buffers freeze the tab while they are filled.
export const MAX_BINARY_BYTES = 16 * 1024 * 1024;
export const MAX_REPEAT = 10000;

export function parseSubprotocols(text) {
  const list = text.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = list.find((name) => !TOKEN.test(name));
  if (bad !== undefined) {
    return { list, error: `subprotocol "${bad}" is not a valid token (letters, digits and !#$%&'*+-.^_\`|~ only; separate several with commas)` };
  }
  if (new Set(list).size !== list.length) return { list, error: "a subprotocol is offered twice" };
  return { list, error: null };
}

export function roomError(name) {
  if (name.length < 1 || name.length > MAX_ROOM_LENGTH) return `room name must be 1 to ${MAX_ROOM_LENGTH} characters`;
  if (!ROOM.test(name)) return "room name may hold only ASCII letters, digits, '-', '_' and '.'";
  return null;
}

// RFC 6455 7.4: a page may send 1000 or 3000-4999; the reason is at most 123 bytes of UTF-8.
export function closeError(code, reason) {
  if (!Number.isInteger(code) || (code !== 1000 && (code < 3000 || code > 4999))) {
    return "close code must be 1000 or 3000-4999 (the others are reserved for the protocol)";
  }
  if (new TextEncoder().encode(reason).length > 123) return "close reason must be at most 123 bytes of UTF-8";
  return null;
}

export function binarySizeError(size) {
  if (!Number.isInteger(size) || size < 0) return "binary size must be a whole number of bytes, 0 or more";
  if (size > MAX_BINARY_BYTES) return `binary size must be at most ${MAX_BINARY_BYTES} bytes (the page's bound; the server echoes far less)`;
  return null;
}

export function repeatError(count) {
  if (!Number.isInteger(count) || count < 1 || count > MAX_REPEAT) return `repeat must be 1 to ${MAX_REPEAT}`;
  return null;
}
