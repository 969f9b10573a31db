// edgemm kiosk page: pick or take a picture, type or say an answer, see the model's verdict.
// Plain JavaScript, no libraries, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
// token: the API token (undefined until asked for; null when this server needs none).
const state = { image: null, audio: null, model: null, recorder: null, token: undefined };
const MAX_RECORD_SECONDS = 10;

function show(el, visible) { el.hidden = !visible; }

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  const el = $("error");
  el.textContent = message;
  show(el, Boolean(message));
}

// An exposed server gives its API token only to this page on the kiosk itself (loopback).
class Refused extends Error {}

async function loadToken() {
  const res = await fetch("/v1/kiosk/token", { headers: { accept: "application/json" }, cache: "no-store" });
  const body = await res.json();
  if (res.status === 403) throw new Refused(body.error.message);
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  state.token = body.token;
}

function withToken(headers) {
  return state.token ? { ...headers, authorization: "Bearer " + state.token } : headers;
}

async function loadModel() {
  try {
    if (state.token === undefined) await loadToken();
    const res = await fetch("/v1/model", { headers: withToken({ accept: "application/json" }) });
    if (res.status === 401) state.token = undefined; // the token changed: ask again
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    state.model = body;
    const has = (m) => Object.prototype.hasOwnProperty.call(body.modalities, m);
    show($("image-section"), has("image"));
    show($("text-section"), has("text"));
    show($("audio-section"), has("audio"));
    if (!has("text")) $("audio-heading").textContent = "Say your answer";
    setStatus("Ready");
  } catch (err) {
    if (err instanceof Refused) {
      setStatus(err.message);
      return;
    }
    setStatus("The kiosk is starting… (" + err.message + ")");
    setTimeout(loadModel, 2000);
  }
}

function setImage(blob) {
  state.image = blob;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  show(img, true);
  show($("no-image"), false);
  show($("camera"), false);
}

// --- camera (only where the browser allows it: https or localhost, and a camera present) ---
async function startCamera() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    const video = $("camera");
    video.srcObject = stream;
    await video.play();
    show(video, true);
    show($("preview"), false);
    show($("no-image"), false);
    show($("snap-btn"), true);
  } catch (err) {
    showError("The camera is not available: " + err.message + ". Choose a picture instead.");
  }
}

function snap() {
  const video = $("camera");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  video.srcObject.getTracks().forEach((t) => t.stop());
  show($("snap-btn"), false);
  canvas.toBlob((blob) => setImage(blob), "image/png");
}

// --- recording: raw PCM from Web Audio, encoded as 16-bit WAV (what the server accepts) ---
function encodeWav(chunks, rate) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const buffer = new ArrayBuffer(44 + length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, length * 2, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++, offset += 2) {
      const s = Math.max(-1, Math.min(1, chunk[i]));
      view.setInt16(offset, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
  }
  return new Blob([buffer], { type: "audio/wav" });
}

async function toggleRecording() {
  const button = $("record-btn");
  if (state.recorder) { state.recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const ctx = new AudioContext();
    const source = ctx.createMediaStreamSource(stream);
    const node = ctx.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    source.connect(node);
    node.connect(ctx.destination);
    const timer = setTimeout(() => state.recorder && state.recorder.stop(), MAX_RECORD_SECONDS * 1000);
    state.recorder = {
      stop() {
        clearTimeout(timer);
        node.disconnect(); source.disconnect();
        stream.getTracks().forEach((t) => t.stop());
        state.audio = encodeWav(chunks, ctx.sampleRate);
        ctx.close();
        state.recorder = null;
        button.textContent = "🎤 Record again";
        button.classList.remove("recording");
        const playback = $("playback");
        playback.src = URL.createObjectURL(state.audio);
        show(playback, true);
      },
    };
    button.textContent = "⏹️ Stop";
    button.classList.add("recording");
  } catch (err) {
    showError("The microphone is not available: " + err.message);
  }
}

// --- asking ---
function showResult(body) {
  const label = body.label !== null ? body.label : Object.keys(body.values || {})[0] || "?";
  $("result-label").textContent = label;
  const score = typeof body.score === "number" ? body.score : null;
  $("result-bar").style.width = score === null ? "0" : Math.round(score * 100) + "%";
  $("result-score").textContent = score === null ? "" : "Confidence: " + Math.round(score * 100) + "%";
  const top = $("result-top");
  top.replaceChildren();
  for (const [name, value] of Object.entries(body.scores || {}).slice(0, 3)) {
    const li = document.createElement("li");
    li.textContent = name + " — " + Math.round(value * 100) + "%";
    top.appendChild(li);
  }
  show($("result"), true);
}

async function ask(event) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  const text = $("text-input").value;
  if (!$("text-section").hidden && text) form.append("text", text);
  if (state.image) form.append("image", state.image, "picture");
  if (state.audio) form.append("audio", state.audio, "answer.wav");
  const submit = $("submit-btn");
  submit.disabled = true;
  setStatus("Thinking…");
  try {
    const res = await fetch("/v1/predict", { method: "POST", body: form, headers: withToken({}) });
    if (res.status === 401) state.token = undefined;
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    showResult(body);
    setStatus("Ready");
  } catch (err) {
    show($("result"), false);
    showError(err.message);
    setStatus("Ready");
  } finally {
    submit.disabled = false;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("image-input").addEventListener("change", (e) => { if (e.target.files[0]) setImage(e.target.files[0]); });
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    show($("camera-btn"), true);
    $("camera-btn").addEventListener("click", startCamera);
    $("snap-btn").addEventListener("click", snap);
  } else {
    show($("record-btn"), false);
  }
  $("record-btn").addEventListener("click", toggleRecording);
  $("ask").addEventListener("submit", ask);
  loadModel();
});
