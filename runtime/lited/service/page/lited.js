// lited's page: each stream live, its figures, the models, an image to try, the events.
// No build step, no library, nothing from outside this daemon (the board may be offline).
//
// Live view: the MJPEG of /v1/streams/<name>/live is read with fetch(), part by part. Each part is
// one frame with its own result drawn on it by the daemon, and the same result as JSON in its
// X-Lited-Result header, so the labels listed beside a frame are always that frame's.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const lited = { streams: {}, frames: 0, unreachable: "", unreachableSince: "" };  // the state, also read by the tests
window.lited = lited;

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function text(el, value) { if (el.textContent !== value) el.textContent = value; }

// --- the multipart/x-mixed-replace body, part by part ---------------------------------------
function indexOf(buf, pattern, from) {
  outer: for (let i = from; i <= buf.length - pattern.length; i++) {
    for (let j = 0; j < pattern.length; j++) if (buf[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}

const HEAD_END = new Uint8Array([13, 10, 13, 10]);

async function* parts(reader) {
  let buf = new Uint8Array(0);
  const ascii = new TextDecoder("ascii");
  async function more() {
    const { value, done } = await reader.read();
    if (done) return false;
    const joined = new Uint8Array(buf.length + value.length);
    joined.set(buf);
    joined.set(value, buf.length);
    buf = joined;
    return true;
  }
  for (;;) {
    let end;
    while ((end = indexOf(buf, HEAD_END, 0)) < 0) if (!(await more())) return;
    const headers = {};
    for (const line of ascii.decode(buf.subarray(0, end)).split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const start = end + 4, length = parseInt(headers["content-length"], 10);
    if (!(length >= 0)) throw new Error("a part without Content-Length");
    while (buf.length < start + length) if (!(await more())) return;
    yield { seq: Number(headers["x-lited-seq"]), result: JSON.parse(headers["x-lited-result"] || "{}"),
            jpeg: buf.slice(start, start + length) };
    buf = buf.slice(start + length);
  }
}

// --- streams -----------------------------------------------------------------------------------
function streamCard(name) {
  let s = lited.streams[name];
  if (s) return s;
  const card = $("#stream-card").content.firstElementChild.cloneNode(true);
  card.id = "stream-" + name;
  card.dataset.frames = "0";
  text($(".name", card), name);
  const empty = $("#streams .empty");
  if (empty) empty.remove();
  $("#streams").appendChild(card);
  s = lited.streams[name] = { card, frames: 0, seq: -1, result: null, stop: new AbortController() };
  watch(name, s);
  return s;
}

function dropStream(name) {  // gone from the daemon (config reload): its card and its live view go
  const s = lited.streams[name];
  delete lited.streams[name];
  s.stop.abort();
  s.card.remove();
}

function showFrame(s, bitmap, part) {
  const canvas = $("canvas.live", s.card);
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  const r = part.result;
  s.frames += 1;
  s.seq = part.seq;
  s.result = r;
  lited.frames += 1;
  s.card.dataset.frames = String(s.frames);
  s.card.dataset.seq = String(part.seq);
  text($(".frame", s.card), `frame ${part.seq} · ${r.model || ""} ${r.model_version || ""} · ` +
       new Date((r.frame_ts || 0) * 1000).toLocaleTimeString());
  const items = [...(r.detections || []), ...(r.classes || [])].slice(0, 12)
    .map((d) => `${d.label} ${Number(d.score).toFixed(2)}`);
  const list = $(".labels", s.card);
  list.replaceChildren(...items.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
}

async function watch(name, s) {
  while (!s.stop.signal.aborted) {
    try {
      const resp = await fetch(`/v1/streams/${encodeURIComponent(name)}/live`,
                               { cache: "no-store", signal: s.stop.signal });
      if (resp.ok) {
        for await (const part of parts(resp.body.getReader())) {
          const bitmap = await createImageBitmap(new Blob([part.jpeg], { type: "image/jpeg" }));
          showFrame(s, bitmap, part);
          bitmap.close();
        }
      } else if (resp.status === 404) {
        return;  // the stream is gone (config reload)
      }
    } catch (e) {
      if (s.stop.signal.aborted) return;
      console.warn("live", name, e);
    }
    await sleep(2000);
  }
}

function ms(q) { return q ? `${q.p50.toFixed(1)} / ${q.p99.toFixed(1)} ms` : "–"; }

function showStatus(st) {
  text($("#version"), `v${st.version}`);
  text($("#daemon"), `up ${Math.round(st.uptime_s)} s · daemon ${st.rss_mb} MB · engines ${st.engines_rss_mb} MB`);
  const last = st.last_reload || {};
  text($("#reload"), last.ts === undefined ? "" : last.ok ? `last reload ok: ${last.models}` : `last reload FAILED: ${last.error}`);
  $("#reload").className = last.ok === false ? "error" : "";
  for (const s of st.streams) {
    const { card } = streamCard(s.stream);
    const state = $(".state", card);
    // the source may stream on while the engine is down: said beside the state, as `lited ctl status` does
    text(state, s.state + (s.detail ? ` (${s.detail})` : "") + (s.engine_down ? ` (engine down: ${s.engine_down})` : ""));
    state.className = "state " + s.state;
    card.dataset.state = s.state;
    text($(".fps", card), s.fps.toFixed(1));
    text($(".model", card), s.model ? `${s.model.name} ${s.model.version}` : "–");
    const lat = s.latency_ms || {};
    text($(".latency", card), `total ${ms(lat.total)} · infer ${ms(lat.infer)}`);
    const c = s.counters;
    text($(".frames", card), `${c.captured} / ${c.inferred}`);
    text($(".skipped", card), String(c.skipped));
    text($(".restarts", card), String(c.engine_restarts));
    text($(".reconnects", card), String(c.reconnects));
  }
  const present = new Set(st.streams.map((s) => s.stream));
  for (const name of Object.keys(lited.streams)) if (!present.has(name)) dropStream(name);
  const rows = Object.entries(st.models).map(([name, m]) => {
    const tr = document.createElement("tr");
    for (const v of [name, m.version, m.task, m.bundle]) { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); }
    return tr;
  });
  $("#models tbody").replaceChildren(...rows);
  const select = $("#model");
  if (select.options.length !== Object.keys(st.models).length) {
    select.replaceChildren(...Object.keys(st.models).map((n) => new Option(n, n)));
  }
  document.body.dataset.ready = "1";
}

// The daemon out of reach (down, restarting, or refusing this page): said in the header and once in
// the log, the stream cards dimmed, until a status comes again; the log keeps its events meanwhile.
function showUnreachable(why) {
  if (!lited.unreachable) {  // logged once, as it begins; the header follows the reason
    lited.unreachableSince = new Date().toLocaleTimeString();
    logLine(`status: ${why}`, true);
  }
  lited.unreachable = why;
  text($("#link"), `daemon out of reach since ${lited.unreachableSince}: ${why}`);
  document.body.dataset.unreachable = "1";
}

function showReachable() {
  if (!lited.unreachable) return;
  logLine(`status: the daemon answers again (out of reach since ${lited.unreachableSince})`, false);
  lited.unreachable = "";
  text($("#link"), "");
  document.body.dataset.unreachable = "0";
}

// Refreshes overlap (the 2-s timer, and each state or reload event): an answer is shown only if no
// refresh asked later was shown already. Else a slow 200 asked before the daemon stopped, landing
// after a refused one, said "answers again" and then "out of reach" a second time.
let statusAsked = 0, statusShown = 0;

async function refreshStatus() {
  const asked = ++statusAsked;
  let show;
  try {
    const resp = await fetch("/v1/status", { cache: "no-store" });
    if (resp.ok) {
      const st = await resp.json();
      show = () => { showStatus(st); showReachable(); };
    } else if (resp.status === 401) {
      show = () => showUnreachable("HTTP 401: the daemon has a token: open /?token=TOKEN once");
    } else {
      const body = await resp.json().catch(() => ({}));
      show = () => showUnreachable(`HTTP ${resp.status}${body.error ? ": " + body.error.message : ""}`);
    }
  } catch (e) {
    show = () => showUnreachable(`no answer (${e.message || e})`);
  }
  if (asked < statusShown) return;
  statusShown = asked;
  show();
}

// --- events ------------------------------------------------------------------------------------
function logLine(line, error) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${line}`;
  if (error) li.className = "error";
  const log = $("#log");
  log.prepend(li);
  while (log.children.length > 200) log.lastElementChild.remove();
}

function listen() {
  const events = new EventSource("/v1/events?types=event");
  events.addEventListener("event", (e) => {
    const ev = JSON.parse(e.data);
    logLine(`${ev.stream} ${ev.event}${ev.state ? " " + ev.state : ""}${ev.detail ? ": " + ev.detail : ""}`,
            ev.ok === false || ev.event === "engine");
    if (["state", "reload", "model", "engine"].includes(ev.event)) refreshStatus();
  });
  events.addEventListener("dropped", (e) => logLine(`events dropped: ${e.data}`, true));
  // A refusal (503 busy: all event places taken, 401, 403) closes an EventSource for good, where a
  // broken connection is retried by the browser: opened again here, after the daemon's Retry-After.
  events.onerror = () => {
    if (events.readyState !== EventSource.CLOSED) return;
    logLine("events: the daemon refused this page's event stream; trying again in 5 s", true);
    setTimeout(listen, 5000);
  };
}

// --- an image to try ---------------------------------------------------------------------------
function drawBoxes(canvas, bitmap, result) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const g = canvas.getContext("2d");
  g.drawImage(bitmap, 0, 0);
  g.lineWidth = Math.max(2, Math.round(bitmap.width / 320));
  g.font = `${Math.max(12, Math.round(bitmap.width / 50))}px sans-serif`;
  for (const d of result.detections) {
    g.strokeStyle = g.fillStyle = "#00c800";
    if (d.polygon) {
      g.beginPath();
      d.polygon.forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
      g.closePath();
      g.stroke();
    } else {
      const [x1, y1, x2, y2] = d.box;
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    }
    g.fillText(`${d.label} ${d.score.toFixed(2)}`, d.box[0] + 2, Math.max(14, d.box[1] - 4));
  }
}

function clearUpload() {
  const view = $("#upload-view");
  view.width = view.height = 0;
  $("#upload-results tbody").replaceChildren();
}

$("#infer-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("#file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  if ($("#model").value) form.append("model", $("#model").value);
  if ($("#threshold").value !== "") form.append("threshold", $("#threshold").value);
  const out = $("#infer-result");
  out.dataset.status = "";
  let resp, body;
  try {
    resp = await fetch("/v1/infer", { method: "POST", body: form });
    body = await resp.json();
  } catch (err) {
    clearUpload();
    out.textContent = String(err);
    out.dataset.status = "error";
    return;
  }
  out.textContent = JSON.stringify(body, null, 1);
  const rows = $("#upload-results tbody");
  if (!resp.ok) {
    clearUpload();  // not the last image's picture and boxes beside this one's error
    text($("#upload-timing"), `${resp.status}: ${body.error ? body.error.message : ""}`);
    $("#upload-timing").className = "error";
    out.dataset.status = String(resp.status);
    return;
  }
  const bitmap = await createImageBitmap(file);
  drawBoxes($("#upload-view"), bitmap, body);
  bitmap.close();
  rows.replaceChildren(...[...body.detections, ...body.classes].map((d) => {
    const tr = document.createElement("tr");
    for (const v of [d.label, d.score.toFixed(4), d.box ? d.box.join(", ") : ""]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    return tr;
  }));
  const t = body.timings_ms || {};
  text($("#upload-timing"), `${body.model} ${body.model_version} · ${body.width}x${body.height} · ` +
       Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(", "));
  $("#upload-timing").className = "";
  out.dataset.status = String(resp.status);
});

refreshStatus().then(listen);
setInterval(refreshStatus, 2000);
