// portrait-rt live client: microphone -> WebSocket -> the portrait's frames and audio, played in sync. No build step.
//
// One AudioContext is the clock for everything: microphone sample k was captured at t0 + k / rate (context time),
// video frame i is driven by the audio of [i / 25, (i + 1) / 25) s of the stream, and is shown at t0 + delay + i / 25
// together with its audio. `delay` starts at the first block's arrival plus JITTER_S, grows when a block arrives too
// late to play on time (a stall, never a skip of speech), and shrinks a frame at a time while blocks keep arriving
// early. The latency shown is measured: when a frame is drawn, the time since its audio was captured (context clock,
// output latency included).
const FPS = 25;
const JITTER_S = 0.08; // a block may arrive this much later than the first one did without a stall
const CHUNK_S = 0.04; // microphone audio per WebSocket message
const CATCH_UP_S = 1.5; // the blocks of this much video must all arrive early before the delay shrinks by a frame
const WORKLET = `class Tap extends AudioWorkletProcessor {
  process(inputs) {
    const x = inputs[0][0];
    if (x) this.port.postMessage({t: currentTime, x: x.slice(0)});
    return true;
  }
}
registerProcessor("portrait-rt-tap", Tap);`;

let session = null;
export const stats = { latencies: [], skews: [], late: 0, catchUps: 0, blocks: 0, capture: null, drawn: null,
                       state: "idle" };
window.portraitLive = { start, stop, stats };

const $ = (id) => document.getElementById(id);
function status(text, state) {
  stats.state = state;
  const el = $("rt-status");
  if (el) { el.textContent = text; el.dataset.state = state; }
}

const REFERENCE_SIDE = 1024; // a reference's long side as sent (the model needs 128 px; this keeps paste-back sharp)
const SEND_AS_IS_BYTES = 2 * 2 ** 20; // a file this small and no larger than REFERENCE_SIDE is sent untouched

function readAsDataURL(blob) {
  return new Promise((ok, fail) => {
    const r = new FileReader(); r.onload = () => ok(r.result); r.onerror = fail; r.readAsDataURL(blob);
  });
}

// A Reference slot's image as a data URL, shrunk in the browser to REFERENCE_SIDE on its long side (upright, on
// white where it was transparent, as a JPEG): any photo a phone takes fits in the socket's 16 MB message. A file
// already small is sent as it is; one the browser cannot draw (TIFF...) too, for the server's own loader to judge.
async function reference(file) {
  if (!file || !file.url) return null;
  const blob = await (await fetch(file.url)).blob();
  let bitmap;
  try { bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" }); } catch (err) {
    return await readAsDataURL(blob);
  }
  const scale = REFERENCE_SIDE / Math.max(bitmap.width, bitmap.height);
  if (scale >= 1 && blob.size <= SEND_AS_IS_BYTES) { bitmap.close(); return await readAsDataURL(blob); }
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * Math.min(1, scale)));
  canvas.height = Math.max(1, Math.round(bitmap.height * Math.min(1, scale)));
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
  g.imageSmoothingQuality = "high";
  g.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas.toDataURL("image/jpeg", 0.92);
}

// Why the socket closed, in words, when the server could not say it in a message.
function closedWhy(code) {
  if (code === 1009) return "The portraits are too large to send (the server takes messages up to 16 MB); " +
    "use smaller photos, then press Talk again.";
  if (code === 1008) return "The server refused this page (its address is not allowed); open the Space's own page.";
  return "The connection to the server closed; press Talk to try again.";
}

function percentile(xs, q) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

// values: [ref1, ref2, ref3, guidance_audio, guidance_reference, steps, seed, block_size, play_voice] (Gradio's)
export async function start(...values) {
  if (session) return;
  const [r1, r2, r3, guidanceAudio, guidanceReference, steps, seed, blockSize, playVoice] = values;
  const ctx = new AudioContext({ sampleRate: 16000, latencyHint: "interactive" });
  const s = (session = { ctx, playVoice: !!playVoice, frames: new Map(), t0: null, delay: null, sent: 0,
                         ended: false, lastDrawn: -1, slacks: [], audioEnd: 0 });
  Object.assign(stats, { latencies: [], skews: [], late: 0, catchUps: 0, blocks: 0, state: "connecting" });
  if (window.portraitLiveCapture) { stats.capture = []; stats.drawn = []; }
  status("Connecting…", "connecting");
  const canvas = $("rt-canvas");
  if (canvas) canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  const references = await Promise.all([r1, r2, r3].map(reference)); // one per slot, null where empty
  const url = new URL("ws", import.meta.url.replace("/static/live.js", "/"));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = (s.ws = new WebSocket(url));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", references, guidance_audio: guidanceAudio,
    guidance_reference: guidanceReference, num_inference_steps: steps, seed, block_size: Number(blockSize),
    sample_rate: ctx.sampleRate, paste_back: false })); // the model's square crop: ~4 KB a frame, not a photo's
  ws.onmessage = (e) => (typeof e.data === "string" ? onMessage(s, JSON.parse(e.data)) : onBlock(s, e.data));
  ws.onclose = (e) => {
    if (!s.ended) finish(s, closedWhy(e.code));
    else if (s.delay === null) finish(s, null); // nothing left to play
  };
  requestAnimationFrame(() => draw(s));
}

export function stop() {
  const s = session;
  if (!s) return;
  closeMic(s);
  if (s.ws.readyState === WebSocket.OPEN && s.t0 !== null) {
    s.ws.send(JSON.stringify({ type: "stop" }));
    status("Finishing the last block…", "stopping");
  } else { // still connecting or waiting in line
    s.ended = true;
    s.endReason = "hung up before the stream started";
    s.ws.close();
  }
}

async function onMessage(s, m) {
  if (m.type === "queued") {
    const nth = m.position === 1 ? "next" : `number ${m.position}`;
    status(`Busy: every live slot is taken. You are ${nth} in line; your microphone opens when it is your turn.`,
           "queued");
  } else if (m.type === "ready") {
    try { await openMic(s); } catch (err) {
      status(`Could not open the microphone: ${err.message}. Allow it in the browser, then press Talk again.`,
             "error");
      s.ws.close();
      return;
    }
    status(`Live: talk now (up to ${Math.round(m.time_limit_s)} s).`, "live");
  } else if (m.type === "error" || m.type === "refused") {
    s.ended = true;
    status(m.message, m.type);
  } else if (m.type === "ended") {
    s.ended = true;
    s.endReason = m.reason;
    closeMic(s);
    if (stats.state === "live") status(`Ending: ${m.reason}…`, "stopping");
  }
}

async function openMic(s) {
  s.mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: false,
                                                               autoGainControl: false, channelCount: 1 } });
  await s.ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" })));
  s.source = s.ctx.createMediaStreamSource(s.mic);
  s.tap = new AudioWorkletNode(s.ctx, "portrait-rt-tap");
  const chunk = Math.round(CHUNK_S * s.ctx.sampleRate);
  let buf = new Int16Array(chunk), fill = 0, sumsq = 0;
  s.tap.port.onmessage = ({ data }) => {
    const arrived = performance.now(); // (for the test log) the last sample of data.x was captured just now
    if (s.t0 === null) s.t0 = data.t; // the context time of the first sample sent
    data.x.forEach((v, j) => {
      const c = Math.max(-1, Math.min(1, v));
      buf[fill++] = c * 32767; sumsq += c * c;
      if (fill === chunk) {
        if (s.ws.readyState === WebSocket.OPEN) s.ws.send(buf.buffer);
        const start = arrived - (1000 * (data.x.length - 1 - j + chunk)) / s.ctx.sampleRate; // its first sample
        if (stats.capture) stats.capture.push({ t: start, rms: Math.sqrt(sumsq / chunk) });
        s.sent += chunk; buf = new Int16Array(chunk); fill = 0; sumsq = 0;
      }
    });
  };
  s.source.connect(s.tap); // the tap outputs nothing: the user does not hear their own microphone
  await s.ctx.resume(); // (made after an await in the click handler, it may have started suspended)
}

function closeMic(s) {
  if (s.mic) s.mic.getTracks().forEach((t) => t.stop());
  if (s.source) s.source.disconnect();
  if (s.tap) s.tap.port.onmessage = null;
  s.mic = s.source = s.tap = null;
}

function onBlock(s, data) {
  const view = new DataView(data);
  const n = view.getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, n)));
  let at = 4 + n;
  const pcm = new Int16Array(data.slice(at, at + h.audio_bytes));
  at += h.audio_bytes;
  const now = s.ctx.currentTime;
  const playAt = (i) => s.t0 + s.delay + i / h.fps;
  if (s.delay === null) s.delay = now + JITTER_S - s.t0 - h.first_frame / h.fps;
  if (playAt(h.first_frame) < now + 0.02) { // late: everything from here on plays later (a stall, never a skip)
    s.delay = now + JITTER_S - s.t0 - h.first_frame / h.fps;
    stats.late += 1;
    s.slacks = [];
  }
  // Catch up after a stall: when every block of the last CATCH_UP_S came with time to spare, play one frame sooner.
  s.slacks.push(playAt(h.first_frame) - now);
  if (s.slacks.length * h.jpeg_bytes.length / h.fps >= CATCH_UP_S) {
    if (Math.min(...s.slacks) > JITTER_S + 1 / h.fps) { s.delay -= 1 / h.fps; stats.catchUps += 1; }
    s.slacks = [];
  }
  stats.blocks += 1;
  stats.serverMs = h.server_ms;
  h.jpeg_bytes.forEach((size, k) => {
    const i = h.first_frame + k;
    s.frames.set(i, null);
    createImageBitmap(new Blob([data.slice(at, at + size)], { type: "image/jpeg" })).then((b) => {
      if (s.frames.has(i)) s.frames.set(i, b); else b.close();
    });
    at += size;
  });
  s.lastFrame = h.first_frame + h.jpeg_bytes.length - 1;
  if (s.playVoice) {
    const audio = s.ctx.createBuffer(1, pcm.length, h.sample_rate);
    audio.getChannelData(0).set(Float32Array.from(pcm, (v) => v / 32768));
    const src = s.ctx.createBufferSource();
    src.buffer = audio;
    src.connect(s.ctx.destination);
    let when = playAt(h.first_frame), skip = 0; // after a catch-up, skip what would overlap the audio queued
    if (s.audioEnd > when) { skip = s.audioEnd - when; when = s.audioEnd; }
    if (skip < audio.duration) { src.start(when, skip); s.audioEnd = when + audio.duration - skip; }
  }
}

function draw(s) {
  if (session !== s && !s.frames.size) return;
  if (s.delay !== null && s.ctx.state !== "closed") {
    const heard = s.ctx.currentTime - (s.ctx.outputLatency || 0) - (s.ctx.baseLatency || 0);
    const slot = (heard - s.t0 - s.delay) * FPS; // the frame whose audio is being heard now
    const i = Math.floor(slot);
    const bitmap = s.frames.get(i);
    if (bitmap && i !== s.lastDrawn) {
      const canvas = $("rt-canvas");
      if (canvas) {
        if (canvas.width !== bitmap.width) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
        canvas.getContext("2d").drawImage(bitmap, 0, 0); // at the model's resolution; CSS scales it up
      }
      s.lastDrawn = i;
      stats.latencies.push(s.ctx.currentTime - (s.t0 + i / FPS)); // since frame i's audio was captured
      stats.skews.push((slot - i) / FPS); // drawn this long after its audio started playing (< 1 frame: in sync)
      if (stats.latencies.length > 20000) { stats.latencies.splice(0, 5000); stats.skews.splice(0, 5000); }
      if (stats.drawn && canvas) stats.drawn.push({ i, t: performance.now(), png: canvas.toDataURL() });
      showStats(s);
    }
    for (const k of s.frames.keys()) { // free what has been shown: memory stays bounded
      if (k >= i) break;
      const b = s.frames.get(k);
      if (b) b.close();
      s.frames.delete(k);
    }
    if (s.ended && i > s.lastFrame) return finish(s, null);
  }
  requestAnimationFrame(() => draw(s));
}

function showStats(s) {
  if (s.lastDrawn % 5) return;
  const recent = stats.latencies.slice(-50);
  const el = $("rt-stats");
  if (el) el.textContent = `mic → screen ${percentile(recent, 0.5).toFixed(2)} s (median of the last 2 s, ` +
    `p95 ${percentile(recent, 0.95).toFixed(2)} s) · picture within ${(1000 * Math.max(...stats.skews.slice(-50)))
      .toFixed(0)} ms of its audio · ${stats.late} late block(s) · model ${stats.serverMs} ms per block`;
}

function finish(s, problem) {
  if (s.done) return;
  if (problem && !s.ended) status(problem, "error");
  if (!s.ended && !problem) return;
  s.done = true;
  closeMic(s);
  if (stats.state !== "error" && stats.state !== "refused") status(`Finished: ${s.endReason || "stopped"}.`, "ended");
  if (s.ws.readyState <= WebSocket.OPEN) s.ws.close();
  setTimeout(() => { s.frames.forEach((b) => b && b.close()); s.frames.clear(); s.ctx.close(); }, 500);
  if (session === s) session = null;
}
