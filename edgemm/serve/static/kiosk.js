// edgemm kiosk page: pick or take a picture, type or say an answer, see the verdict in words a child reads.
// Plain JavaScript, no libraries, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
// token: the API token (undefined until asked for; null when this server needs none).
const state = { image: null, audio: null, model: null, recorder: null, token: undefined, lang: "en", camera: null };
const MAX_RECORD_SECONDS = 10;

// --- the page's own words, in the languages it speaks (the bundle's words come from its manifest) ---
const UI = {
  en: {
    title: "Ask the kiosk", loading: "Loading…", ready: "Ready", thinking: "Thinking…",
    starting: "The kiosk is getting ready…", picture: "1. Picture", pictureAlt: "The chosen picture",
    noPicture: "No picture yet", takePhoto: "Take a photo", snap: "Snap", choosePicture: "Choose a picture",
    yourAnswer: "2. Your answer", typeAnswer: "Type your answer", orSay: "Or say it", sayAnswer: "Say your answer",
    record: "Record", recordAgain: "Record again", stop: "Stop", check: "Check", resultHeading: "Result",
    resultPlaceholder: "Press Check to see if you are right.", next: "Next question", sure: "How sure: {n}%",
    instruction: "Look at the picture, give your answer, then press Check.",
    cameraFailed: "The camera is not working. Choose a picture instead.",
    micFailed: "The microphone is not working. Type your answer instead.",
    detail: "For a grown-up: {code}",
  },
  zh: {
    title: "问问小助手", loading: "正在加载…", ready: "准备好了", thinking: "正在想…",
    starting: "小助手正在准备…", picture: "1. 图片", pictureAlt: "选好的图片",
    noPicture: "还没有图片", takePhoto: "拍照", snap: "拍下", choosePicture: "选一张图片",
    yourAnswer: "2. 你的答案", typeAnswer: "输入你的答案", orSay: "或者说出来", sayAnswer: "说出你的答案",
    record: "录音", recordAgain: "再录一次", stop: "停止", check: "检查", resultHeading: "结果",
    resultPlaceholder: "按“检查”看看你答对了没有。", next: "下一题", sure: "把握：{n}%",
    instruction: "看看图片，给出你的答案，然后按“检查”。",
    cameraFailed: "相机不能用。请选一张图片。",
    micFailed: "麦克风不能用。请输入你的答案。",
    detail: "给大人看：{code}",
  },
};

// Friendly words for every error code the API returns (edgemm/serve/httperrors.py CODES), by group.
const ERROR_TEXT = {
  en: {
    missing: "Something is missing: add a picture and your answer.",
    missingImage: "Add a picture first.", missingText: "Type your answer first.", missingAudio: "Record your answer first.",
    unreadable: "That picture or recording could not be read. Try another one.",
    tooBig: "That is too big. Try a smaller picture or a shorter answer.",
    busy: "The kiosk is busy. Wait a moment, then press Check again.",
    notReady: "The kiosk is getting ready. Try again in a moment.",
    notAllowed: "This page may not ask the kiosk. Ask a grown-up for help.",
    broken: "Something went wrong. Press Check again, or ask a grown-up.",
    offline: "The kiosk cannot be reached. Ask a grown-up for help.",
  },
  zh: {
    missing: "还缺点东西：请加一张图片和你的答案。",
    missingImage: "请先加一张图片。", missingText: "请先输入你的答案。", missingAudio: "请先录下你的答案。",
    unreadable: "这张图片或录音读不出来。换一个试试。",
    tooBig: "太大了。换一张小一点的图片或短一点的答案。",
    busy: "小助手正忙。等一会儿，再按“检查”。",
    notReady: "小助手正在准备。过一会儿再试。",
    notAllowed: "这个页面不能提问。请找大人帮忙。",
    broken: "出了点问题。再按一次“检查”，或者找大人帮忙。",
    offline: "连不上小助手。请找大人帮忙。",
  },
};
const ERRORS = {
  missing_modality: "missing",
  invalid_input: "unreadable", unsupported_media: "unreadable", unsupported_media_type: "unreadable",
  invalid_request: "broken", invalid_json: "broken", json_too_deep: "broken", invalid_utf8: "unreadable",
  malformed_http: "broken", not_found: "broken", method_not_allowed: "broken",
  body_too_large: "tooBig", input_too_large: "tooBig", headers_too_large: "broken",
  header_timeout: "busy", body_timeout: "busy", overloaded: "busy", deadline_exceeded: "busy",
  too_many_connections: "busy", too_many_client_connections: "busy", too_many_client_requests: "busy",
  rate_limited: "busy", not_ready: "notReady",
  host_not_allowed: "notAllowed", origin_not_allowed: "notAllowed", unauthorized: "notAllowed", forbidden: "notAllowed",
  internal: "broken", unsupported_transfer_encoding: "broken",
};

// The language tag of `declared` that best serves the browser's `preferred` list (exact tag first, then the
// same primary language: zh-CN → zh); `fallback` when none does. (Same rule as edgemm.bundle.display.)
function bestLanguage(preferred, declared, fallback) {
  const primary = (tag) => tag.toLowerCase().split("-")[0];
  for (const want of preferred) {
    const exact = declared.find((d) => d.toLowerCase() === want.toLowerCase());
    if (exact) return exact;
    const near = declared.find((d) => primary(d) === primary(want));
    if (near) return near;
  }
  return fallback;
}

function browserLanguages() {
  return navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
}

function uiLanguage(lang) {
  return bestLanguage([lang], Object.keys(UI), "en");
}

function t(key, values) {
  const table = UI[uiLanguage(state.lang)];
  let text = table[key] !== undefined ? table[key] : UI.en[key];
  for (const [name, value] of Object.entries(values || {})) text = text.replace("{" + name + "}", value);
  return text;
}

function errorText(key) {
  const table = ERROR_TEXT[uiLanguage(state.lang)];
  return table[key] || ERROR_TEXT.en[key] || ERROR_TEXT.en.broken;
}

function display() {
  const d = state.model && state.model.display;
  return d && d.languages ? d : null;
}

// Pick the language (the bundle's declared ones, else the page's own), set lang and every text.
function applyLanguage() {
  const d = display();
  const declared = d ? Object.keys(d.languages) : Object.keys(UI);
  state.lang = bestLanguage(browserLanguages(), declared, d ? d.default_language : "en");
  document.documentElement.lang = state.lang;
  const ui = uiLanguage(state.lang);
  // Where the page has no words in the bundle's language, its own fall back to English, marked as such.
  const mark = (el) => { if (ui.split("-")[0] !== state.lang.toLowerCase().split("-")[0]) el.lang = ui; else el.removeAttribute("lang"); };
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); mark(el); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  document.querySelectorAll("[data-i18n-alt]").forEach((el) => { el.alt = t(el.dataset.i18nAlt); });
  document.title = t("title");
  const lang = d ? d.languages[state.lang] : null;
  $("instruction").textContent = lang ? lang.instruction : t("instruction");
  if (lang) $("instruction").removeAttribute("lang"); else mark($("instruction"));
}

// A label as the bundle says it in this language, else humanised: "no_match" → "No match".
function labelText(label) {
  const d = display();
  const entry = d && d.languages[state.lang] && d.languages[state.lang].labels[label];
  if (entry) return { name: entry.name, message: entry.message };
  const words = String(label).replace(/[_-]+/g, " ").trim();
  return { name: words ? words[0].toUpperCase() + words.slice(1) : String(label), message: "" };
}

function show(el, visible) { el.hidden = !visible; }

function setStatus(key) { $("status").textContent = t(key); }

function showError(message, detail) {
  $("error").textContent = message || "";
  $("error-detail").textContent = detail ? t("detail", { code: detail }) : "";
  show($("error-box"), Boolean(message));
  if (message) {
    show($("next-btn"), true);
    revealResult();
  }
}

// An exposed server gives its API token only to this page on the kiosk itself (loopback).
class ApiFailure extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function apiJson(res) {
  let body = null;
  try { body = await res.json(); } catch (err) { body = null; }
  if (!res.ok) {
    const error = body && body.error ? body.error : {};
    throw new ApiFailure(error.code || "internal", error.message || res.statusText);
  }
  return body;
}

async function loadToken() {
  const res = await fetch("/v1/kiosk/token", { headers: { accept: "application/json" }, cache: "no-store" });
  state.token = (await apiJson(res)).token;
}

function withToken(headers) {
  return state.token ? { ...headers, authorization: "Bearer " + state.token } : headers;
}

async function hasDevice(kind) {
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices || !navigator.mediaDevices.getUserMedia) return false;
    return (await navigator.mediaDevices.enumerateDevices()).some((d) => d.kind === kind);
  } catch (err) {
    return false;
  }
}

async function loadModel() {
  try {
    if (state.token === undefined) await loadToken();
    const res = await fetch("/v1/model", { headers: withToken({ accept: "application/json" }) });
    if (res.status === 401) state.token = undefined; // the token changed: ask again
    const body = await apiJson(res);
    state.model = body;
    applyLanguage();
    const has = (m) => Object.prototype.hasOwnProperty.call(body.modalities, m);
    show($("image-section"), has("image"));
    show($("text-section"), has("text"));
    // Media buttons only where the device exists: a "Take a photo" that cannot work only confuses.
    const [camera, microphone] = await Promise.all([hasDevice("videoinput"), hasDevice("audioinput")]);
    show($("camera-btn"), has("image") && camera);
    show($("audio-section"), has("audio") && microphone);
    if (!has("text")) $("audio-heading").textContent = t("sayAnswer");
    setStatus("ready");
  } catch (err) {
    if (err instanceof ApiFailure && ["forbidden", "unauthorized", "host_not_allowed", "origin_not_allowed"].includes(err.code)) {
      $("status").textContent = errorText("notAllowed");
      return;
    }
    setStatus("starting");
    setTimeout(loadModel, 2000);
  }
}

function setImage(blob) {
  state.image = blob;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.classList.remove("pixelated");
  img.src = URL.createObjectURL(blob);
  show(img, true);
  show($("no-image"), false);
  show($("camera"), false);
}

// Scaled to fit its box (CSS object-fit); a picture smaller than the box is drawn as crisp pixels, not a blur.
function onPreviewLoad() {
  const img = $("preview");
  const box = $("preview-box").getBoundingClientRect();
  const smaller = img.naturalWidth < box.width && img.naturalHeight < box.height;
  img.classList.toggle("pixelated", smaller);
}

// --- camera (only where the browser allows it: https or localhost, and a camera present) ---
async function startCamera() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    state.camera = stream;
    const video = $("camera");
    video.srcObject = stream;
    await video.play();
    show(video, true);
    show($("preview"), false);
    show($("no-image"), false);
    show($("snap-btn"), true);
    $("snap-btn").focus();
  } catch (err) {
    showError(t("cameraFailed"), err.name || "camera");
  }
}

function stopCamera() {
  if (state.camera) state.camera.getTracks().forEach((track) => track.stop());
  state.camera = null;
  show($("camera"), false);
  show($("snap-btn"), false);
}

function snap() {
  const video = $("camera");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  stopCamera();
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
  const label = $("record-text");
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
        stream.getTracks().forEach((track) => track.stop());
        state.audio = encodeWav(chunks, ctx.sampleRate);
        ctx.close();
        state.recorder = null;
        label.dataset.i18n = "recordAgain";
        label.textContent = t("recordAgain");
        button.classList.remove("recording");
        const playback = $("playback");
        playback.src = URL.createObjectURL(state.audio);
        show(playback, true);
      },
    };
    label.dataset.i18n = "stop";
    label.textContent = t("stop");
    button.classList.add("recording");
  } catch (err) {
    showError(t("micFailed"), err.name || "microphone");
  }
}

// --- asking ---
// Keep the verdict in view: beside the inputs on landscape screens (sticky, CSS), scrolled to otherwise.
function revealResult() {
  const panel = $("result-panel");
  const box = panel.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) panel.scrollIntoView({ block: "nearest" });
}

function showResult(body) {
  const label = body.label !== null && body.label !== undefined ? body.label : Object.keys(body.values || {})[0] || "?";
  const text = labelText(label);
  $("result-label").textContent = text.name;
  $("result-label").dataset.label = label;
  $("result-message").textContent = text.message;
  show($("result-message"), Boolean(text.message));
  const score = typeof body.score === "number" ? body.score : null;
  $("result-bar").style.width = score === null ? "0" : Math.round(score * 100) + "%";
  $("result-score").textContent = score === null ? "" : t("sure", { n: Math.round(score * 100) });
  show($("result-placeholder"), false);
  show($("result-body"), true);
  show($("next-btn"), true);
  revealResult();
}

// Which required input is missing, in words (the server only says which modality).
function missingText() {
  const required = Object.entries((state.model && state.model.modalities) || {}).filter(([, spec]) => spec.required).map(([m]) => m);
  const text = $("text-input").value.trim();
  if (required.includes("image") && !state.image) return errorText("missingImage");
  if (required.includes("text") && !text) return errorText("missingText");
  if (required.includes("audio") && !state.audio) return errorText("missingAudio");
  return errorText("missing");
}

async function ask(event) {
  event.preventDefault();
  if (state.busy) return;
  showError("");
  const form = new FormData();
  const text = $("text-input").value;
  if (!$("text-section").hidden && text) form.append("text", text);
  if (state.image) form.append("image", state.image, "picture");
  if (state.audio) form.append("audio", state.audio, "answer.wav");
  const submit = $("submit-btn");
  state.busy = true;
  submit.disabled = true;
  setStatus("thinking");
  try {
    let res;
    try {
      res = await fetch("/v1/predict", { method: "POST", body: form, headers: withToken({}) });
    } catch (err) {
      throw new ApiFailure("offline", err.message);
    }
    if (res.status === 401) state.token = undefined;
    showResult(await apiJson(res));
    setStatus("ready");
  } catch (err) {
    show($("result-body"), false);
    show($("result-placeholder"), false);
    const code = err instanceof ApiFailure ? err.code : "internal";
    const message = code === "missing_modality" ? missingText()
      : code === "offline" ? errorText("offline") : errorText(ERRORS[code] || "broken");
    showError(message, code);
    setStatus("ready");
  } finally {
    state.busy = false;
    submit.disabled = false;
  }
  // Keyboard users land on "Next question"; the verdict itself is announced by the live region.
  if (!$("next-btn").hidden) $("next-btn").focus({ preventScroll: true });
}

// "Next question": everything back to the start, ready for the next child.
function reset() {
  stopCamera();
  if (state.recorder) state.recorder.stop();
  state.image = null;
  state.audio = null;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.removeAttribute("src");
  img.classList.remove("pixelated");
  show(img, false);
  show($("no-image"), true);
  $("image-input").value = "";
  $("text-input").value = "";
  const playback = $("playback");
  if (playback.src) URL.revokeObjectURL(playback.src);
  playback.removeAttribute("src");
  show(playback, false);
  $("record-text").dataset.i18n = "record";
  $("record-text").textContent = t("record");
  $("result-label").textContent = "";
  $("result-message").textContent = "";
  $("result-score").textContent = "";
  $("result-bar").style.width = "0";
  show($("result-body"), false);
  show($("result-placeholder"), true);
  showError("");
  show($("next-btn"), false);
  setStatus("ready");
  window.scrollTo(0, 0);
  const first = !$("image-section").hidden ? $("image-input") : !$("text-section").hidden ? $("text-input") : $("submit-btn");
  first.focus({ preventScroll: true });
}

window.addEventListener("DOMContentLoaded", () => {
  applyLanguage();
  $("image-input").addEventListener("change", (e) => { if (e.target.files[0]) { stopCamera(); setImage(e.target.files[0]); } });
  $("preview").addEventListener("load", onPreviewLoad);
  $("camera-btn").addEventListener("click", startCamera);
  $("snap-btn").addEventListener("click", snap);
  $("record-btn").addEventListener("click", toggleRecording);
  $("next-btn").addEventListener("click", reset);
  $("ask").addEventListener("submit", ask);
  loadModel();
});
