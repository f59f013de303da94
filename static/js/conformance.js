// "Test this browser": the Autobahn TestSuite's client cases, run in this page's own WebSocket.
// The fuzzing server (manage.py fuzzingserver, at the section's data-url) speaks Autobahn's
// client API: /getCaseCount, /getCaseInfo?case=N, /runCase?case=N&agent=A (the case: echo every
// message until it closes), /getCaseStatus?case=N&agent=A (its verdict) and /updateReports.
// Cases run one at a time: kosoku gives each 20 s, and a case's length must not depend on load.

const PASSING = new Set(["OK", "INFORMATIONAL"]);

// The browser's name and major version, as the agent the fuzzing server files verdicts under.
export function agentName(userAgent = navigator.userAgent) {
  const match = /(Firefox|Edg|OPR|HeadlessChrome|Chromium|Chrome|Version)\/(\d+)/.exec(userAgent);
  if (!match) return "browser";
  const name = match[1] === "Version" ? "Safari" : match[1];
  return `${name}-${match[2]}`;
}

// One message of JSON from an Autobahn API endpoint, which then closes.
function ask(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let answer;
    ws.onmessage = (event) => { answer = JSON.parse(event.data); };
    ws.onclose = () => (answer === undefined ? reject(new Error(`no answer from ${url}`)) : resolve(answer));
  });
}

// One case: echo every message, text or binary, as it came, until the connection closes.
function runCase(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(event.data);
    };
    ws.onclose = (event) => resolve(event);
  });
}

function row(body, info) {
  const tr = document.createElement("tr");
  const id = document.createElement("td");
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = info.id;
  const description = document.createElement("p");
  description.textContent = `${info.description} Expected: ${info.expectation}`;
  details.append(summary, description);
  id.append(details);
  const behaviour = document.createElement("td");
  behaviour.textContent = "running";
  const close = document.createElement("td");
  tr.append(id, behaviour, close);
  tr.dataset.case = info.id;
  body.append(tr);
  return { tr, behaviour, close };
}

// Wires the section: returns nothing; the section's data-state says idle, running or done.
export function wireConformance(section) {
  const base = section.dataset.url;
  const button = section.querySelector("#conformance-run");
  const progress = section.querySelector("#conformance-progress");
  const table = section.querySelector("#conformance-table");
  const body = section.querySelector("#conformance-results");
  section.dataset.state = "idle";
  if (!base) return;  // the template disabled the button and says how to start a server

  async function run() {
    button.disabled = true;
    section.dataset.state = "running";
    body.replaceChildren();
    table.hidden = false;
    const agent = agentName();
    section.dataset.agent = agent;
    const counts = new Map();
    try {
      const count = await ask(`${base}/getCaseCount`);
      for (let n = 1; n <= count; n++) {
        const info = await ask(`${base}/getCaseInfo?case=${n}`);
        const cells = row(body, info);
        progress.textContent = `case ${n} of ${count} (${info.id}), as ${agent}`;
        await runCase(`${base}/runCase?case=${n}&agent=${encodeURIComponent(agent)}`);
        const status = await ask(`${base}/getCaseStatus?case=${n}&agent=${encodeURIComponent(agent)}`);
        cells.behaviour.textContent = status.behavior;
        cells.close.textContent = status.behaviorClose ?? "";
        cells.tr.dataset.behavior = status.behavior;
        if (!PASSING.has(status.behavior)) cells.behaviour.title = status.result ?? "";
        counts.set(status.behavior, (counts.get(status.behavior) ?? 0) + 1);
      }
      await ask(`${base}/updateReports?agent=${encodeURIComponent(agent)}`);
      const summary = [...counts].map(([label, n]) => `${n} ${label}`).join(", ");
      progress.textContent = `${count} cases as ${agent}: ${summary}`;
    } catch (err) {
      progress.textContent = `stopped: ${err.message} (is manage.py fuzzingserver running at ${base}?)`;
    } finally {
      section.dataset.state = "done";
      button.disabled = false;
    }
  }

  button.addEventListener("click", run);
}
