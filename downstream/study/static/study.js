// The rater's side of the real-vs-fake study (served by downstream/study/app.py).
// One trial: fixation cross -> both photos for exposure_ms (timed on animation frames,
// started only once both images are decoded, so loading never eats into the exposure)
// -> photos hidden -> the rater picks the fake (click/tap or keys) -> the answer is posted
// (retried until stored; the server ignores repeats) -> the next trial.
"use strict";

const FIXATION_MS = 500;   // blank + cross before each pair: the eyes land in the middle
const FEEDBACK_MS = 1400;  // practice feedback stays this long
const MIN_WIDTH = 256;     // CSS px
const KEY = "colorbench-study-rater:" + location.pathname;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const frame = () => new Promise((r) => requestAnimationFrame(r));

let rater = null;
let answering = null;  // resolves with "left"/"right" while a choice is open

class ClientError extends Error {}

async function api(method, url, body) {
  // Network failures and server errors are retried with backoff (answers are idempotent
  // on the server); 4xx replies are the client's mistake and are raised.
  for (let attempt = 0; ; attempt++) {
    let res = null;
    try {
      res = await fetch(url, {method, headers: {"Content-Type": "application/json"},
                              body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (e) { res = null; }
    if (res && res.ok) { $("status").textContent = ""; return res.json(); }
    if (res && res.status >= 400 && res.status < 500) {
      const data = await res.json().catch(() => ({}));
      throw new ClientError(data.error || res.statusText);
    }
    $("status").textContent = "Connection problem, retrying… (your answers are kept)";
    await sleep(Math.min(8000, 500 * 2 ** attempt));
  }
}

function show(section) {
  for (const id of ["intro", "welcome-back", "trial", "done"]) $(id).hidden = id !== section;
}

function progress(state) {
  const p = $("progress");
  p.hidden = false;
  p.setAttribute("aria-valuenow", state.done);
  p.querySelector(".bar").style.width = (100 * state.done / state.total) + "%";
  p.querySelector(".label").textContent = state.done + " / " + state.total;
}

function remember(id) {
  rater = id;
  try { localStorage.setItem(KEY, id); } catch (e) { /* private mode: the resume link still works */ }
  const link = location.origin + location.pathname + "?r=" + id;
  $("resume-link").href = link;
  $("resume-link").textContent = link;
  $("resume").hidden = false;
}

function loadImage(url) {
  const img = new Image();
  img.src = url;
  return img.decode().then(() => img);
}

function setChoosing(open) {
  for (const id of ["slot-left", "slot-right", "choose-left", "choose-right"]) $(id).disabled = !open;
}

async function present(trial, exposureMs) {
  // Returns {choice, response_ms, shown_ms}.
  const stage = document.querySelector(".stage");
  stage.className = "stage fixation";
  $("prompt").textContent = trial.practice ? "Practice pair: get ready…" : "Get ready…";
  $("feedback").textContent = "";
  const [left, right] = await Promise.all([loadImage(trial.left), loadImage(trial.right)]);
  for (const [slot, img] of [["slot-left", left], ["slot-right", right]]) {
    const el = $(slot);
    el.querySelector("img").src = img.src;
    el.style.setProperty("--ar", img.naturalWidth / img.naturalHeight);
    // shown at their own size, but never narrower than 256 px (the paper's size): a tiny
    // image is enlarged, both sides alike
    el.style.setProperty("--w", Math.max(img.naturalWidth, MIN_WIDTH) + "px");
    el.classList.remove("chosen");
  }
  await sleep(FIXATION_MS);
  await frame();
  stage.className = "stage showing";
  $("prompt").textContent = "Look…";
  const t0 = await frame();  // the first frame painted with the photos
  let now = t0;
  while (now - t0 < exposureMs - 8) now = await frame();  // 8 ms: half a 60 Hz frame
  stage.className = "stage masked";
  const hidden = await frame();
  $("prompt").textContent = "Which one was fake?";
  setChoosing(true);
  const choice = await new Promise((resolve) => { answering = resolve; });
  answering = null;
  setChoosing(false);
  $("slot-" + choice).classList.add("chosen");
  return {choice, response_ms: Math.round(performance.now() - hidden), shown_ms: Math.round(hidden - t0)};
}

function choose(side) { if (answering) answering(side); }

async function run(state) {
  show("trial");
  progress(state);
  while (state.trial) {
    const trial = state.trial;
    if (state.upcoming) { new Image().src = state.upcoming.left; new Image().src = state.upcoming.right; }
    const answer = await present(trial, state.exposure_ms);
    state = await api("POST", "/api/raters/" + rater + "/answers", {pair: trial.pair, ...answer});
    progress(state);
    if (state.feedback) {
      const fb = $("feedback");
      fb.textContent = state.feedback.correct ? "Right! The " + state.feedback.fake + " photo was fake."
        : "Not this time: the " + state.feedback.fake + " photo was fake.";
      fb.className = state.feedback.correct ? "good" : "bad";
      await sleep(FEEDBACK_MS);
      fb.textContent = "";
    }
  }
  $("code").textContent = rater.slice(0, 8).toUpperCase();
  show("done");
}

async function startNew() {
  $("start").disabled = true;
  const viewport = window.innerWidth + "x" + window.innerHeight;
  const state = await api("POST", "/api/raters", {consent: true, viewport});
  remember(state.rater);
  await run(state);
}

async function main() {
  const fromUrl = new URLSearchParams(location.search).get("r");
  let saved = fromUrl;
  try { saved = saved || localStorage.getItem(KEY); } catch (e) { /* no storage */ }
  $("consent").addEventListener("change", () => { $("start").disabled = !$("consent").checked; });
  $("start").addEventListener("click", () => startNew().catch(fail));
  for (const id of ["slot-left", "slot-right", "choose-left", "choose-right"])
    $(id).addEventListener("click", (e) => choose(e.currentTarget.dataset.side));
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const k = e.key.toLowerCase();
    if (k === "arrowleft" || k === "f" || k === "1") { choose("left"); e.preventDefault(); }
    if (k === "arrowright" || k === "j" || k === "2") { choose("right"); e.preventDefault(); }
  });
  if (saved) {
    try {
      const state = await api("GET", "/api/raters/" + saved);
      remember(saved);
      if (!state.trial) { progress(state); $("code").textContent = saved.slice(0, 8).toUpperCase(); show("done"); return; }
      $("wb-done").textContent = state.done;
      $("wb-total").textContent = state.total;
      show("welcome-back");
      $("continue").addEventListener("click", () => run(state).catch(fail), {once: true});
      return;
    } catch (e) {
      if (!(e instanceof ClientError)) throw e;  // unknown id (another study?): start afresh
    }
  }
  show("intro");
}

function fail(e) { $("status").textContent = "Something went wrong: " + e.message + ". Reload the page to continue."; }

main().catch(fail);
