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

// /ws/test/'s parameters, as the server checks them (app/behaviours.py): the same ranges and
// the same words, so that the page names the rule before the server refuses the handshake
// with it (a browser sees that refusal only as a 1006). In the order of the docs' table.
const WHOLE = /^[0-9]{1,7}$/;
const DECIMAL = /^(?:[0-9]{1,5}(?:\.[0-9]{1,3})?|\.[0-9]{1,3})$/;
const CLOSE_CODES = [[1000, 1003], [1007, 1014], [3000, 4999]];
export const MAX_PUSH_TOTAL = 64 * 1024 * 1024;

export const BEHAVIOURS = [
  { name: "fragment", kind: "whole", low: 1, high: 65536, unit: " bytes" },
  { name: "delay", kind: "whole", low: 0, high: 10000, unit: " ms" },
  { name: "ping", kind: "decimal", low: 0.1, high: 60, unit: " s" },
  { name: "pong_timeout", kind: "decimal", low: 0.1, high: 60, unit: " s", needs: "ping" },
  { name: "close", kind: "code" },
  { name: "reason", kind: "reason", needs: "close" },
  { name: "close_after", kind: "whole", low: 0, high: 100000, unit: " echoes", needs: "close" },
  { name: "close_in", kind: "whole", low: 0, high: 600000, unit: " ms", needs: "close" },
  { name: "drop_after", kind: "whole", low: 0, high: 100000, unit: " echoes" },
  { name: "push", kind: "whole", low: 0, high: 100000, unit: " messages" },
  { name: "push_size", kind: "whole", low: 0, high: 1024 * 1024, unit: " bytes", needs: "push" },
  { name: "push_rate", kind: "decimal", low: 0.1, high: 10000, unit: " messages/s", needs: "push" },
  { name: "push_type", kind: "choice", choices: ["text", "bytes"], fallback: "text", needs: "push" },
  { name: "compress", kind: "choice", choices: ["auto", "never", "always", "alternate"], fallback: "auto" },
  { name: "headers", kind: "flag" },
];

const thousands = (n) => n.toLocaleString("en-US");

function behaviourError(rule, value) {
  const { name, low, high, unit } = rule;
  switch (rule.kind) {
    case "whole":
      if (!WHOLE.test(value) || Number(value) < low || Number(value) > high) {
        return `${name} must be a whole number ${thousands(low)}-${thousands(high)}${unit}, got "${value}"`;
      }
      return null;
    case "decimal":
      if (!DECIMAL.test(value) || Number(value) < low || Number(value) > high) {
        return `${name} must be a number ${low}-${thousands(high)}${unit} (at most 3 decimals), got "${value}"`;
      }
      return null;
    case "code": {
      const code = Number(value);
      if (WHOLE.test(value) && CLOSE_CODES.some(([a, b]) => code >= a && code <= b)) return null;
      return `close must be a close code a server may send (${CLOSE_CODES.map(([a, b]) => `${a}-${b}`).join(", ")}), got "${value}"`;
    }
    case "reason": {
      const size = new TextEncoder().encode(value).length;
      return size > 123 ? `reason must be at most 123 bytes of UTF-8, got ${size}` : null;
    }
    case "choice":
      return rule.choices.includes(value) ? null : `${name} must be one of ${rule.choices.join("|")}, got "${value}"`;
    default:
      return null;
  }
}

// values: {name: string or boolean} from the panel; "" (or false, or a choice's default) is
// "not given". Returns {query, error, name}: the query string, or the first rule broken and
// the parameter that broke it.
export function behaviourQuery(values) {
  const given = new Map();
  for (const rule of BEHAVIOURS) {
    const raw = values[rule.name];
    if (rule.kind === "flag") {
      if (raw) given.set(rule.name, "1");
      continue;
    }
    const value = rule.kind === "reason" ? (raw ?? "") : String(raw ?? "").trim();
    if (value === "" || value === rule.fallback) continue;
    const error = behaviourError(rule, value);
    if (error) return { query: null, error, name: rule.name };
    given.set(rule.name, value);
  }
  for (const rule of BEHAVIOURS) {
    if (rule.needs && given.has(rule.name) && !given.has(rule.needs)) {
      return { query: null, error: `${rule.name} needs ${rule.needs}`, name: rule.name };
    }
  }
  const push = Number(given.get("push") ?? 0);
  const size = Number(given.get("push_size") ?? 0);
  if (given.get("push_type") === "bytes" && push && size < 16) {
    return { query: null, error: "push_size must be at least 16 for push_type=bytes (its header)", name: "push_size" };
  }
  if (push * size > MAX_PUSH_TOTAL) {
    return { query: null, error: `push x push_size must be at most ${thousands(MAX_PUSH_TOTAL)} bytes (64 MiB), got ${thousands(push * size)}`, name: "push_size" };
  }
  return { query: new URLSearchParams([...given]).toString(), error: null, name: null };
}
