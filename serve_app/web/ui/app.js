// The page's wiring: tabs, settings, upload and record, status, result and downloads.
import { ApiError, apiBase, fetchModels, settings, transcribe } from "./api.js";
import { FILE_TYPES, renderAs } from "./formats.js";
import { LiveCaptions } from "./live.js";
import { Recorder } from "./recorder.js";
import { drawTimeline, highlight } from "./timeline.js";

const $ = (id) => document.getElementById(id);
const state = { result: null, audioName: "audio", audioUrl: null, busy: false, words: [], buttons: [] };

// ------------------------------------------------------------------ settings

function initSettings() {
  $("server").value = settings.server;
  $("api-key").value = settings.apiKey;
  $("server").addEventListener("change", () => {
    settings.server = $("server").value;
    checkServer();
  });
  $("api-key").addEventListener("change", () => {
    settings.apiKey = $("api-key").value;
    checkServer();
  });
}

async function checkServer() {
  const info = $("server-info");
  try {
    const models = await fetchModels();
    info.textContent = `Model ${models[0]} at ${apiBase()}`;
    hideError();
  } catch (err) {
    info.textContent = `Not connected to ${apiBase()}`;
    if (err.status === 401) $("connection").open = true;
    showError(err);
  }
}

// ------------------------------------------------------------------ tabs (ARIA pattern)

function initTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const t of tabs) {
      const chosen = t === tab;
      t.setAttribute("aria-selected", String(chosen));
      t.tabIndex = chosen ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !chosen;
    }
    tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length]);
      if (e.key === "Home") select(tabs[0]);
      if (e.key === "End") select(tabs.at(-1));
    });
  });
}

// ------------------------------------------------------------------ status and errors

function showStatus(text, fraction = null) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  const bar = $("progress");
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
}

function hideStatus() {
  $("status").hidden = true;
}

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  box.hidden = false;
  box.focus();
}

function hideError() {
  $("error").hidden = true;
}

// ------------------------------------------------------------------ transcription

function options() {
  return {
    decoding_mode: $("mode").value,
    verbatimicity: Number($("verbatimicity").value).toFixed(2),
  };
}

async function run(blob, name) {
  if (state.busy) return;
  state.busy = true;
  setBusy(true);
  hideError();
  state.audioName = name.replace(/\\/g, "/").split("/").pop() || "audio";
  if (state.audioUrl) URL.revokeObjectURL(state.audioUrl);
  state.audioUrl = URL.createObjectURL(blob);
  $("player").src = state.audioUrl;
  $("result").hidden = false;
  $("transcript").replaceChildren();
  $("timeline").replaceChildren();
  $("formatted").textContent = "";
  $("result").dataset.state = "running";
  const pending = document.createElement("span");
  pending.className = "pending";
  $("transcript").append(pending);
  showStatus(`Uploading ${state.audioName}…`, 0);
  try {
    const result = await transcribe(blob, state.audioName, options(), {
      onUpload: (f) => showStatus(`Uploading ${state.audioName}: ${Math.round(f * 100)}%`, f),
      onUploaded: () => showStatus("Transcribing…"),
      onDelta: (delta) => {
        pending.textContent += delta;
        showStatus("Transcribing… (text arrives as each part finishes)");
      },
    });
    showResult(result);
    hideStatus();
  } catch (err) {
    hideStatus();
    $("result").hidden = true;
    showError(err);
  } finally {
    state.busy = false;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("file").disabled = busy;
  $("record-start").disabled = busy || Boolean(recorder.recorder);
  for (const b of document.querySelectorAll("#downloads button")) b.disabled = busy;
}

function showResult(result) {
  state.result = result;
  state.words = result.words || [];
  $("transcript").textContent = result.text || "(no speech recognised)";
  state.buttons = drawTimeline($("timeline"), state.words, result.duration, (t) => {
    const player = $("player");
    player.currentTime = t;
    player.play().catch(() => {});
  });
  showFormatted();
  $("result").dataset.state = "done";
}

function showFormatted() {
  if (!state.result) return;
  const format = $("format").value;
  $("formatted-name").textContent = format;
  $("formatted").textContent = renderAs(format, state.result, state.audioName);
}

function download(format) {
  if (!state.result) return;
  const [extension, type] = FILE_TYPES[format];
  const body = renderAs(format, state.result, state.audioName);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([body], { type: `${type};charset=utf-8` }));
  link.download = `${state.audioName.replace(/\.[^.]*$/, "") || "transcript"}.${extension}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ------------------------------------------------------------------ upload

function initUpload() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) run(file, file.name);
    $("file").value = "";
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) run(file, file.name);
  });
}

// ------------------------------------------------------------------ record

const recorder = new Recorder({
  onLevel: (level) => ($("record-level").value = level),
  onTick: (s) => ($("record-time").textContent = `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`),
});

function initRecord() {
  $("record-start").addEventListener("click", async () => {
    hideError();
    try {
      await recorder.start();
      $("record-start").disabled = true;
      $("record-stop").disabled = false;
      $("record-stop").focus();
    } catch (err) {
      showError(err);
    }
  });
  $("record-stop").addEventListener("click", async () => {
    $("record-stop").disabled = true;
    const { blob, name } = await recorder.stop();
    $("record-start").disabled = false;
    run(blob, name);
  });
}

// ------------------------------------------------------------------ live

/** The caption line of a turn, made when its first event arrives. */
function turnLine(itemId) {
  let line = document.querySelector(`#captions [data-item="${CSS.escape(itemId)}"]`);
  if (!line) {
    line = document.createElement("p");
    line.className = "turn";
    line.dataset.item = itemId;
    line.dataset.state = "partial";
    line.append(Object.assign(document.createElement("span"), { className: "partial" }));
    $("captions").append(line);
  }
  return line;
}

function onLiveEvent(event) {
  const type = event.type;
  if (type === "input_audio_buffer.speech_started") {
    turnLine(event.item_id);
    $("live-state").textContent = "Hearing speech…";
  } else if (type === "input_audio_buffer.speech_stopped") {
    $("live-state").textContent = "Listening";
  } else if (type.endsWith("input_audio_transcription.delta")) {
    turnLine(event.item_id).querySelector(".partial").textContent += event.delta;
  } else if (type.endsWith("input_audio_transcription.completed")) {
    const line = turnLine(event.item_id);
    if (!event.transcript && !line.querySelector(".partial").textContent) line.remove();
    else {
      line.textContent = event.transcript;
      line.dataset.state = "final";
    }
  } else if (type.endsWith("input_audio_transcription.failed")) {
    showError(new Error(`A turn could not be transcribed: ${event.error.message}`));
  } else if (type === "error" && event.error.event_id !== "stop") {
    showError(new Error(`The live session reported: ${event.error.message} (${event.error.code})`));
  }
  const captions = $("captions");
  captions.scrollTop = captions.scrollHeight;
}

const live = new LiveCaptions({
  onEvent: onLiveEvent,
  onLevel: (level) => ($("live-level").value = level),
  onClosed: (why) => {
    liveStopped();
    if (why) showError(new Error(`The live session ended: ${why}`));
  },
});

function liveStopped() {
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
  $("live-state").textContent = "Stopped";
}

function initLive() {
  $("live-start").addEventListener("click", async () => {
    hideError();
    $("live-start").disabled = true;
    $("live-state").textContent = "Connecting…";
    try {
      const chosen = options();
      await live.start({ ...chosen, verbatimicity: Number(chosen.verbatimicity) });
      $("live-stop").disabled = false;
      $("live-state").textContent = "Listening";
      $("live-stop").focus();
    } catch (err) {
      liveStopped();
      showError(err);
    }
  });
  $("live-stop").addEventListener("click", async () => {
    $("live-stop").disabled = true;
    $("live-state").textContent = "Finishing…";
    await live.stop();
    liveStopped();
  });
}

// ------------------------------------------------------------------ start

function init() {
  initSettings();
  initTabs();
  initUpload();
  initRecord();
  initLive();
  $("verbatimicity").addEventListener("input", () => {
    $("verbatimicity-value").textContent = Number($("verbatimicity").value).toFixed(2);
  });
  $("format").addEventListener("change", showFormatted);
  for (const b of document.querySelectorAll("#downloads button")) {
    b.addEventListener("click", () => download(b.dataset.format));
  }
  $("player").addEventListener("timeupdate", () => highlight(state.buttons, state.words, $("player").currentTime));
  checkServer();
  document.body.dataset.ready = "true";
}

init();
