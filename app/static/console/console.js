// The browser console: a token, a session (POST …/sessions), its WebSocket in xterm.js.
"use strict";

const [, , host, container] = location.pathname.split("/").map(decodeURIComponent);
const statusLine = document.getElementById("status");
const encoder = new TextEncoder();
let term = null;

document.getElementById("target").textContent = `${host} / ${container}`;

function setStatus(text) {
  statusLine.textContent = text;
}

function commandArgv() {
  const text = document.getElementById("command").value.trim();
  return text ? text.split(/\s+/) : ["sh"];
}

async function createSession(token, size) {
  const response = await fetch(
    `/api/v1/hosts/${encodeURIComponent(host)}/containers/${encodeURIComponent(container)}/sessions`,
    {method: "POST",
     headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
     body: JSON.stringify({cmd: commandArgv(), tty: true, size: size})});
  const answer = await response.json();
  if (response.status !== 201) {
    throw new Error(`${response.status}: ${answer.detail || answer.title}`);
  }
  return answer;
}

function openTerminal() {
  if (term) {
    term.dispose();
  }
  term = new Terminal({cursorBlink: true, convertEol: false});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  return term;
}

function relay(term, url) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setStatus("connected");
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      const control = JSON.parse(event.data);
      if ("exit" in control) {
        setStatus(`exit ${control.exit}`);
      }
    } else {
      term.write(new Uint8Array(event.data));
    }
  };
  ws.onclose = (event) => {
    if (!statusLine.textContent.startsWith("exit")) {
      setStatus(`closed ${event.code} ${event.reason}`);
    }
    term.write(`\r\n[session ended: ${event.reason || event.code}]\r\n`);
  };
  term.onData((data) => ws.readyState === WebSocket.OPEN && ws.send(encoder.encode(data)));
  term.onResize(({cols, rows}) => {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({resize: [cols, rows]}));
    }
  });
}

document.getElementById("connect").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value;
  const terminal = openTerminal();
  setStatus("connecting");
  try {
    const session = await createSession(token, [terminal.cols, terminal.rows]);
    relay(terminal, session.url);
    terminal.focus();
  } catch (error) {
    setStatus(`refused ${error.message}`);
  }
});

// What the terminal shows, as text (for tests and for copying).
window.consoleText = () => {
  if (!term) {
    return "";
  }
  const buffer = term.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) {
    lines.push(buffer.getLine(i).translateToString(true));
  }
  return lines.join("\n");
};
window.consoleSize = () => (term ? [term.cols, term.rows] : null);
