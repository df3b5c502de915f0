// The exported model in the browser: pictures from the device or the live camera in, the
// same answers as the studio's Try page out. Runs with onnxruntime-web (WebAssembly, on the
// CPU) from ./ort/; nothing is sent anywhere and nothing is fetched from another site.
//
// Pictures are prepared as the studio prepares them: turned upright (EXIF), transparency on
// white, the longer side shrunk to at most 640 pixels with Pillow's bilinear resampling
// (re-implemented below, in the same fixed-point arithmetic); the model resizes, crops and
// normalises inside itself.

const MAX_SIDE = 640; // the studio shrinks every picture to at most this many pixels a side
const MAX_PIXELS = 100_000_000; // larger pictures are refused, as in the studio
const TOP_BARS = 5;
const LIVE_EVERY_MS = 250; // live guesses at most four times a second
const NO_WASM =
  "This browser cannot run the model: it has no WebAssembly. Use a recent Chrome, Edge, " +
  "Firefox or Safari.";
const NEEDS_HTTPS =
  "The camera needs the page to be opened over https (or from this computer).";

const $ = (id) => document.getElementById(id);
const state = {
  config: null, ort: null, session: null, which: "full", live: null, turn: Promise.resolve(),
};
// For tests and measurements: how long loading took, and each picture's time.
window.tlWebPage = { ready: false, loadMs: null, timings: [] };

// ------------------------------------------------------------------ Pillow's resampling

const PRECISION_BITS = 22; // 32 - 8 - 2, as Pillow's Resample.c
const HALF = 1 << (PRECISION_BITS - 1);
const ONE = 1 << PRECISION_BITS;

function clip8(ss) {
  const v = Math.floor(ss / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// Fixed-point weights of Pillow's bilinear filter (support 1, widened when shrinking).
function coefficients(inSize, in0, in1, outSize) {
  const scale = Math.fround(in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * ONE : 0.5 + k * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

// One pass of Pillow's separable resampling over RGB pixels: along x ("h") or y ("v").
function resamplePass(src, width, height, outSize, in0, in1, along) {
  const horizontal = along === "h";
  const { ksize, bounds, kk } = coefficients(horizontal ? width : height, in0, in1, outSize);
  const outW = horizontal ? outSize : width;
  const outH = horizontal ? height : outSize;
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const i = horizontal ? x : y;
      const min = bounds[i * 2];
      const n = bounds[i * 2 + 1];
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let t = 0; t < n; t++) {
        const k = kk[i * ksize + t];
        const p = horizontal ? (y * width + min + t) * 3 : ((min + t) * width + x) * 3;
        s0 += src[p] * k;
        s1 += src[p + 1] * k;
        s2 += src[p + 2] * k;
      }
      const o = (y * outW + x) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

// Pillow's Image.reduce: the mean of each fx-by-fy block (partial blocks at the edges too).
function reduce(src, width, height, fx, fy) {
  const outW = Math.ceil(width / fx);
  const outH = Math.ceil(height / fy);
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    const y1 = Math.min(height, (y + 1) * fy);
    for (let x = 0; x < outW; x++) {
      const x1 = Math.min(width, (x + 1) * fx);
      const n = (x1 - x * fx) * (y1 - y * fy);
      const multiplier = Math.trunc(Math.fround(2 ** 32 / Math.fround(256 * n)));
      const sums = [Math.floor(n / 2), Math.floor(n / 2), Math.floor(n / 2)];
      for (let yy = y * fy; yy < y1; yy++) {
        for (let xx = x * fx; xx < x1; xx++) {
          const p = (yy * width + xx) * 3;
          sums[0] += src[p];
          sums[1] += src[p + 1];
          sums[2] += src[p + 2];
        }
      }
      const o = (y * outW + x) * 3;
      for (let c = 0; c < 3; c++) out[o + c] = Math.floor((sums[c] * multiplier) / 2 ** 24);
    }
  }
  return { data: out, width: outW, height: outH };
}

// Pillow's thumbnail size: the aspect ratio kept, the side rounded to the closer fit.
function thumbnailSize(width, height, side) {
  const aspect = width / height;
  const roundAspect = (number, key) => {
    const lo = Math.floor(number);
    const hi = Math.ceil(number);
    return Math.max(key(hi) < key(lo) ? hi : lo, 1);
  };
  if (1 >= aspect) {
    return [roundAspect(side * aspect, (n) => Math.abs(aspect - n / side)), side];
  }
  return [side, roundAspect(side / aspect, (n) => (n === 0 ? 0 : Math.abs(aspect - side / n)))];
}

// Image.thumbnail((side, side), BILINEAR, reducing_gap=3.0) of RGB pixels.
function capSide(pic, side = MAX_SIDE) {
  let { data, width, height } = pic;
  if (width <= side && height <= side) return pic;
  const [tw, th] = thumbnailSize(width, height, side);
  let box = [0, 0, width, height];
  const fx = Math.trunc(width / tw / 3.0) || 1;
  const fy = Math.trunc(height / th / 3.0) || 1;
  if (fx > 1 || fy > 1) {
    ({ data, width, height } = reduce(data, width, height, fx, fy));
    box = [0, 0, box[2] / fx, box[3] / fy];
  }
  const [b0, b1, b2, b3] = box.map(Math.fround);
  if (tw !== width || b0 || b2 !== tw) {
    data = resamplePass(data, width, height, tw, b0, b2, "h");
    width = tw;
  }
  if (th !== height || b1 || b3 !== th) {
    data = resamplePass(data, width, height, th, b1, b3, "v");
    height = th;
  }
  return { data, width, height };
}

// ------------------------------------------------------------------ pictures

class PictureError extends Error {}

// RGBA -> RGB, transparency composited on white with Pillow's alpha_composite arithmetic.
function toRgb(rgba, width, height) {
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, o = 0; i < rgba.length; i += 4, o += 3) {
    const a = rgba[i + 3];
    if (a === 255) {
      out[o] = rgba[i];
      out[o + 1] = rgba[i + 1];
      out[o + 2] = rgba[i + 2];
      continue;
    }
    const coef1 = Math.floor((a * 255 * 255 * 128) / (a * 255 + 255 * (255 - a)));
    const coef2 = 255 * 128 - coef1;
    for (let c = 0; c < 3; c++) {
      const t = rgba[i + c] * coef1 + 255 * coef2 + (0x80 << 7);
      out[o + c] = (((t >> 8) + t) >> 8) >> 7;
    }
  }
  return out;
}

// The picture's pixels as drawn (upright), through a canvas; also puts them in ``canvas``.
function drawnRgb(source, width, height, canvas) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.clearRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0);
  return toRgb(ctx.getImageData(0, 0, width, height).data, width, height);
}

// JPEG files are decoded at 1/2, 1/4 or 1/8 size when that still leaves 640 pixels a side
// (Pillow's draft): approximated here by the mean of each 2x2, 4x4 or 8x8 block.
function draftScale(width, height) {
  const scale = Math.min(Math.floor(width / MAX_SIDE), Math.floor(height / MAX_SIDE));
  return [8, 4, 2, 1].find((s) => scale >= s) || 1;
}

async function isJpeg(file) {
  const head = new Uint8Array(await file.slice(0, 3).arrayBuffer());
  return head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
}

async function decode(file) {
  try {
    return await createImageBitmap(file, {
      imageOrientation: "from-image",
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch {
    throw new PictureError(
      "This browser cannot open this file as a picture. Try a JPEG or PNG photo.",
    );
  }
}

// A picture file -> RGB pixels (at most MAX_SIDE a side), as the studio reads it.
async function prepare(file, canvas = document.createElement("canvas")) {
  const bitmap = await decode(file);
  try {
    const { width, height } = bitmap;
    if (width * height > MAX_PIXELS) {
      throw new PictureError(`This picture is too large (${width}x${height} pixels).`);
    }
    let pic = { data: drawnRgb(bitmap, width, height, canvas), width, height };
    const s = (await isJpeg(file)) ? draftScale(width, height) : 1;
    if (s > 1) pic = reduce(pic.data, width, height, s, s);
    return capSide(pic);
  } finally {
    bitmap.close();
  }
}

// For tests: a picture file's prepared pixels (width, height, RGB bytes as base64).
window.tlWebPage.prepare = async (blob) => {
  const pic = await prepare(blob);
  let text = "";
  for (let i = 0; i < pic.data.length; i += 0x8000) {
    text += String.fromCharCode(...pic.data.subarray(i, i + 0x8000));
  }
  return { width: pic.width, height: pic.height, rgb: btoa(text) };
};

// ------------------------------------------------------------------ the model

// The same sentence as the Try page (tl_ui.live_route.verdict); percentages as Python's
// format "{:.0%}" (halves to even).
function percent(p) {
  const x = p * 100;
  const f = Math.floor(x);
  const d = x - f;
  const n = d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
  return `${n}%`;
}

function verdict(probs, classes, notSureBelow, unfamiliar) {
  let k = 0;
  for (let i = 1; i < probs.length; i++) if (probs[i] > probs[k]) k = i;
  const top = classes[k];
  const p = probs[k];
  if (unfamiliar) {
    const text = `${state.config.unfamiliar_sentence} The nearest is '${top}' (${percent(p)}).`;
    return { top, kind: "unfamiliar", text };
  }
  if (p >= notSureBelow) return { top, kind: "sure", text: `${top} (${percent(p)})` };
  const text =
    `Not sure: the best guess is '${top}' at only ${percent(p)}. The picture may show ` +
    "none of your classes.";
  return { top, kind: "not sure", text };
}

function softmax(logits, temperature) {
  const z = Array.from(logits, (v) => v / temperature);
  const max = Math.max(...z);
  const e = z.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

async function answer(pic) {
  const { ort, session, config } = state;
  const input = new ort.Tensor("uint8", pic.data, [1, pic.height, pic.width, 3]);
  // One run at a time: the live camera and chosen pictures take turns.
  const turn = state.turn.then(async () => {
    const started = performance.now();
    const out = await session.run({ [config.input.name]: input });
    return { out, ms: performance.now() - started };
  });
  state.turn = turn.catch(() => {});
  const { out, ms } = await turn;
  const probs = softmax(out.logits.data, config.temperature);
  const far = out.unfamiliarity ? out.unfamiliarity.data[0] : null;
  // Each model has its own threshold (the 8-bit one's is set on its own scores).
  const own = modelFile(state.which).unfamiliar_threshold;
  const limit = own ?? config.unfamiliar_threshold;
  const unfamiliar = far !== null && limit !== null && far > limit;
  const said = verdict(probs, config.classes, config.not_sure_below, unfamiliar);
  return { probs, unfamiliarity: far, ms, ...said };
}

function modelFile(which) {
  return state.config.models.find((m) => m.key === which) || state.config.models[0];
}

function megabytes(bytes) {
  return `${Math.max(1, Math.round(bytes / 1e6))} MB`;
}

async function loadModel(which) {
  const model = modelFile(which);
  setBusy(true);
  say(`Loading the model (${megabytes(model.bytes)})…`);
  const started = performance.now();
  try {
    const response = await fetch(model.file);
    if (!response.ok) throw new Error(`${model.file}: HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (state.session) await state.session.release();
    state.session = null;
    state.session = await state.ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
  } catch (err) {
    console.error(err);
    say("The model could not be loaded. Open this page from the folder it came in, " +
      "served by a web server, and try again.", true);
    return; // the buttons stay off: there is no model to answer with
  }
  setBusy(false);
  state.which = which;
  window.tlWebPage.loadMs = performance.now() - started;
  window.tlWebPage.ready = true;
  say(`Ready (${model.label.toLowerCase()}): choose pictures or use the camera.`);
}

// ------------------------------------------------------------------ the page

function say(text, problem = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("problem", problem);
}

function setBusy(busy) {
  $("files").disabled = busy;
  $("camera").disabled = busy;
  for (const radio of document.querySelectorAll("input[name=model]")) radio.disabled = busy;
  $("choose-label").classList.toggle("disabled", busy);
}

function drawBars(container, probs, classes) {
  container.replaceChildren();
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, TOP_BARS);
  for (const [p, i] of order) {
    const row = document.createElement("div");
    row.className = "bar-row";
    const name = document.createElement("span");
    name.className = "bar-name";
    name.textContent = classes[i];
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(p);
    row.append(name, track, value);
    container.append(row);
  }
}

function showAnswer(box, result) {
  box.dataset.top = result.top;
  box.dataset.probs = JSON.stringify(result.probs);
  box.dataset.verdict = result.kind;
  box.dataset.unfamiliarity = result.unfamiliarity === null ? "" : String(result.unfamiliarity);
  box.dataset.ms = result.ms.toFixed(1);
  const line = box.querySelector(".answer");
  line.textContent = result.text;
  line.className = `answer ${result.kind.replace(" ", "-")}`;
  drawBars(box.querySelector(".bars"), result.probs, state.config.classes);
}

function resultItem(file) {
  const item = document.createElement("li");
  item.className = "result";
  item.dataset.file = file.name;
  const thumb = document.createElement("img");
  thumb.className = "thumb";
  thumb.alt = file.name;
  thumb.src = URL.createObjectURL(file);
  thumb.onerror = () => thumb.remove();
  const body = document.createElement("div");
  body.className = "answer-box";
  const name = document.createElement("p");
  name.className = "file-name";
  name.textContent = file.name;
  const line = document.createElement("p");
  line.className = "answer";
  line.textContent = "Waiting…";
  const bars = document.createElement("div");
  bars.className = "bars";
  body.append(name, line, bars);
  item.append(thumb, body);
  return item;
}

async function sortPictures(files) {
  setBusy(true);
  const items = files.map(resultItem);
  $("results").prepend(...items);
  try {
    for (let k = 0; k < files.length; k++) {
      say(`Looking at picture ${k + 1} of ${files.length}…`);
      const item = items[k];
      try {
        const result = await answer(await prepare(files[k]));
        window.tlWebPage.timings.push(result.ms);
        showAnswer(item, result);
      } catch (err) {
        if (!(err instanceof PictureError)) console.error(err);
        item.dataset.verdict = "error";
        const line = item.querySelector(".answer");
        line.className = "answer problem";
        line.textContent = err instanceof PictureError
          ? err.message
          : "Something went wrong with this picture; try another one.";
      }
      item.dataset.done = "1";
    }
    say(`Done: ${files.length} picture${files.length === 1 ? "" : "s"}.`);
  } finally {
    setBusy(false);
  }
}

// ------------------------------------------------------------------ the live camera

function cameraMessage(text) {
  const box = $("camera-message");
  box.textContent = text;
  box.hidden = !text;
}

async function startCamera() {
  cameraMessage("");
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    cameraMessage(NEEDS_HTTPS);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: { ideal: "environment" } },
      audio: false,
    });
  } catch (err) {
    const refused = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
    const none = err && (err.name === "NotFoundError" || err.name === "OverconstrainedError");
    cameraMessage(
      refused ? "The browser did not allow the camera. Allow it for this page, then try again."
        : none ? "No camera was found on this device."
        : "The camera could not be started; it may be in use by another app.",
    );
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  $("live").hidden = false;
  $("camera").hidden = true;
  state.live = { stream, timer: null };
  liveStep();
}

async function liveStep() {
  const live = state.live;
  if (!live) return;
  const started = performance.now();
  const video = $("video");
  const box = $("live-answer");
  if (video.videoWidth > 0 && state.session) {
    const canvas = $("live-frame");
    const rgb = drawnRgb(video, video.videoWidth, video.videoHeight, canvas);
    const pic = capSide({ data: rgb, width: video.videoWidth, height: video.videoHeight });
    putPixels(canvas, pic); // the frame exactly as the model saw it
    try {
      showAnswer(box, await answer(pic));
      box.dataset.frames = String(Number(box.dataset.frames) + 1);
    } catch (err) {
      console.error(err);
    }
  }
  if (state.live !== live) return;
  const wait = Math.max(0, LIVE_EVERY_MS - (performance.now() - started));
  live.timer = setTimeout(liveStep, wait);
}

function putPixels(canvas, pic) {
  canvas.width = pic.width;
  canvas.height = pic.height;
  const rgba = new Uint8ClampedArray(pic.width * pic.height * 4);
  for (let i = 0, o = 0; o < rgba.length; i += 3, o += 4) {
    rgba[o] = pic.data[i];
    rgba[o + 1] = pic.data[i + 1];
    rgba[o + 2] = pic.data[i + 2];
    rgba[o + 3] = 255;
  }
  canvas.getContext("2d").putImageData(new ImageData(rgba, pic.width, pic.height), 0, 0);
}

function stopCamera() {
  const live = state.live;
  state.live = null;
  if (!live) return;
  clearTimeout(live.timer);
  for (const track of live.stream.getTracks()) track.stop();
  $("video").srcObject = null;
  $("live").hidden = true;
  $("camera").hidden = false;
}

// ------------------------------------------------------------------ start

function showModelChoice(config) {
  const small = config.models.find((m) => m.key === "small");
  if (!small) return;
  const full = modelFile("full");
  $("full-label").textContent = `Full model: the studio's answers, ${megabytes(full.bytes)}`;
  $("small-label").textContent = `Small model (8-bit): faster, ${megabytes(small.bytes)}`;
  $("model-choice").hidden = false;
  for (const radio of document.querySelectorAll("input[name=model]")) {
    radio.addEventListener("change", () => {
      if (radio.checked && radio.value !== state.which) loadModel(radio.value);
    });
  }
}

async function start() {
  if (location.protocol === "file:") return; // index.html says what to do
  if (typeof WebAssembly !== "object") {
    say(NO_WASM, true);
    return;
  }
  let config;
  try {
    config = await (await fetch("model.json")).json();
  } catch {
    say("The page's model.json could not be read: keep the page's folder complete.", true);
    return;
  }
  state.config = config;
  document.title = config.title;
  $("title").textContent = config.title;
  const ort = await import("./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("ort/", document.baseURI).href;
  ort.env.wasm.numThreads = self.crossOriginIsolated
    ? Math.min(4, navigator.hardwareConcurrency || 1)
    : 1;
  ort.env.wasm.proxy = false;
  state.ort = ort;
  showModelChoice(config);
  $("files").addEventListener("change", (event) => {
    const files = Array.from(event.target.files || []);
    event.target.value = "";
    if (files.length) sortPictures(files);
  });
  $("camera").addEventListener("click", startCamera);
  $("stop").addEventListener("click", stopCamera);
  await loadModel("full");
}

start().catch((err) => {
  console.error(err);
  say("The page could not start in this browser. Try a recent Chrome, Edge, Firefox or Safari.", true);
});
