// The composer's tools: message history (Up/Down in the text box), saved snippets, JSON
// formatting, and copying or exporting the log as JSON.

const HISTORY_LIMIT = 100;
const SNIPPETS_KEY = "channels-echo.snippets";

// Up recalls older sent texts, Down newer ones, as a shell does; what was being typed is kept.
export class History {
  constructor(input) {
    this.input = input;
    this.items = [];
    this.position = 0;
    this.draft = "";
    input.addEventListener("keydown", (event) => this.key(event));
  }

  remember(text) {
    if (text && this.items[this.items.length - 1] !== text) this.items.push(text);
    if (this.items.length > HISTORY_LIMIT) this.items.shift();
    this.position = this.items.length;
    this.draft = "";
  }

  key(event) {
    if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
    if (!this.items.length || event.shiftKey || event.altKey) return;
    // In a text of several lines, the arrows move the caret until it is on the first (Up) or
    // last (Down) line, as in any editor.
    const { value, selectionStart, selectionEnd } = this.input;
    if (event.key === "ArrowUp" && value.lastIndexOf("\n", selectionStart - 1) !== -1) return;
    if (event.key === "ArrowDown" && value.indexOf("\n", selectionEnd) !== -1) return;
    event.preventDefault();
    if (this.position === this.items.length) this.draft = this.input.value;
    this.position = event.key === "ArrowUp"
      ? Math.max(0, this.position - 1)
      : Math.min(this.items.length, this.position + 1);
    this.input.value = this.position === this.items.length ? this.draft : this.items[this.position];
  }
}

// Snippets live in this browser's localStorage, by name.
export class Snippets {
  constructor(select) {
    this.select = select;
    this.items = load();
    this.render();
  }

  save(name, text) {
    this.items[name] = text;
    localStorage.setItem(SNIPPETS_KEY, JSON.stringify(this.items));
    this.render();
    this.select.value = name;
  }

  get(name) {
    return this.items[name];
  }

  render() {
    const options = [new Option("saved snippets\u2026", "")];
    for (const name of Object.keys(this.items).sort()) options.push(new Option(name, name));
    this.select.replaceChildren(...options);
  }
}

function load() {
  try {
    const items = JSON.parse(localStorage.getItem(SNIPPETS_KEY) || "{}");
    return items && typeof items === "object" ? items : {};
  } catch {
    return {};
  }
}

// The text as formatted JSON, or the parser's complaint.
export function formatJson(text) {
  try {
    return { text: JSON.stringify(JSON.parse(text), null, 2), error: null };
  } catch (err) {
    return { text, error: `not valid JSON: ${err.message}` };
  }
}

export function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 0);
}
