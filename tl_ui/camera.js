// The studio's camera: getUserMedia in the browser, frames sent to this app's own server as
// small JPEGs through Streamlit's component values (no WebRTC, no external service).
//
// Streamlit calls the default function again with new `data` after every rerun of the script
// (or fragment) that mounts it, with the same parentElement: the camera, its timers and the
// queue of frames live in one instance per parentElement, so a rerun never restarts the camera.
//
// mode "record": frames are captured at data.fps while recording, queued, and sent in batches
//   ({seq, label, recording, frames: [base64 JPEG]}) as the trigger "frames"; the next batch
//   leaves when the server's answer carries data.ack >= seq (one batch in flight at a time).
// mode "live": one frame at a time, the next when the previous answer came back; the answer's
//   bars and verdict are drawn here. With data.endpoint (the app was started by app.py) the
//   frame is POSTed there as a JPEG and the JSON answer needs no rerun; otherwise it is sent
//   ({seq, image}) as the trigger "frame" and answered in data.answer on the fragment rerun.
//   An answer `superseded` (a newer frame of the same view overtook it) is not drawn; one
//   with status 410 (the model was deleted) is drawn and stops asking.
//   An answer with `unfamiliar` (the frame is unlike every training picture) reads
//   "Unfamiliar" with the nearest class, its bars greyed; data-unfamiliar says so ("1"/"0").
// The state value "camera" says whether the camera works: ready, insecure, denied, none, error.

const instances = new WeakMap();
const MIN_GAP_MS = 80; // live guesses through the studio's route: at most 12 a second
const UNFAMILIAR_WORD = "Unfamiliar"; // how the server's unfamiliar verdict starts

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function cameraProblem(err) {
  const name = (err && err.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return "denied";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return "none";
  }
  return "error";
}

// A camera that does not work: the page says why in words (tl_ui.camera.PROBLEMS), once, so
// the view itself steps aside instead of saying it a second time.
const PROBLEMS = new Set(["insecure", "denied", "none", "error"]);

class Camera {
  constructor(root, api) {
    this.root = root;
    this.api = api;
    this.id = Math.random().toString(36).slice(2, 10);
    this.data = {};
    this.gen = 0;
    this.status = "starting";
    this.stream = null;
    this.timers = [];
    // record mode
    this.recording = false;
    this.recordingId = null;
    this.queue = [];
    this.inflight = null; // {seq, sentAt, batch}
    this.seq = 0;
    this.shotsThisTime = 0;
    // live mode
    this.paused = false;
    this.waiting = null; // {seq, sentAt}
    this.answers = []; // times of the last answers (for the rate)
    this.lastShown = null;
    this.lastAsked = 0;
    this.noRoute = false; // the server has no live route: frames go as trigger values
    this.build();
    this.start();
  }

  build() {
    const box = el("div", "tlcam");
    box.setAttribute("data-testid", "tlcam");
    this.video = el("video", "tlcam-video");
    this.video.muted = true;
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.video.setAttribute("playsinline", "");
    this.canvas = el("canvas");
    this.message = el("div", "tlcam-message", "Starting the camera… Allow it if the browser asks.");
    this.message.setAttribute("data-testid", "tlcam-message");
    const side = el("div", "tlcam-side");
    this.controls = el("div", "tlcam-controls");
    this.info = el("div", "tlcam-info");
    this.info.setAttribute("data-testid", "tlcam-info");
    this.verdict = el("div", "tlcam-verdict");
    this.verdict.setAttribute("data-testid", "tlcam-verdict");
    this.bars = el("div", "tlcam-bars");
    this.rate = el("div", "tlcam-rate");
    this.rate.setAttribute("data-testid", "tlcam-rate");
    const left = el("div", "tlcam-left");
    left.append(this.video, this.message);
    side.append(this.controls, this.info, this.verdict, this.bars, this.rate);
    box.append(left, side);
    this.root.appendChild(box);
    this.box = box;
  }

  setStatus(status) {
    this.status = status;
    if (this.api) this.api.setStateValue("camera", status);
    if (status === "ready") {
      this.message.textContent = "";
      this.message.style.display = "none";
    } else if (PROBLEMS.has(status)) {
      this.box.style.display = "none";
      this.box.setAttribute("data-problem", status);
      this.controls.replaceChildren();
    }
  }

  async start() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this.setStatus("insecure");
      return;
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } },
        audio: false,
      });
    } catch (err) {
      this.setStatus(cameraProblem(err));
      return;
    }
    if (this.destroyed) {
      this.stopStream();
      return;
    }
    this.video.srcObject = this.stream;
    try {
      await this.video.play();
    } catch (_err) {
      // autoplay of a muted stream is allowed; a refusal here still shows the picture later
    }
    this.setStatus("ready");
    this.render();
    this.tick();
  }

  stopStream() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }

  destroy() {
    this.destroyed = true;
    this.recording = false;
    this.timers.forEach((t) => clearInterval(t));
    this.timers = [];
    if (this.captureTimer) clearInterval(this.captureTimer);
    this.stopStream();
    instances.delete(this.root);
  }

  // Draw the current video picture on the canvas, at most `side` pixels on its long side.
  draw(side) {
    const v = this.video;
    if (!v.videoWidth || !v.videoHeight) return false;
    const scale = Math.min(1, side / Math.max(v.videoWidth, v.videoHeight));
    const w = Math.round(v.videoWidth * scale);
    const h = Math.round(v.videoHeight * scale);
    if (this.canvas.width !== w) this.canvas.width = w;
    if (this.canvas.height !== h) this.canvas.height = h;
    this.canvas.getContext("2d").drawImage(v, 0, 0, w, h);
    return true;
  }

  // One JPEG of the current video picture (see draw), base64.
  grab(side, quality) {
    if (!this.draw(side)) return null;
    const url = this.canvas.toDataURL("image/jpeg", quality);
    return url.slice(url.indexOf(",") + 1);
  }

  update(data) {
    const modeChanged = this.data.mode !== data.mode;
    this.data = data || {};
    if (modeChanged) this.render();
    if (this.data.mode === "record") this.onRecordData();
    else this.onLiveData();
  }

  render() {
    this.controls.replaceChildren();
    if (this.status !== "ready") return;
    if (this.data.mode === "record") this.renderRecord();
    else this.renderLive();
  }

  // ---- record ------------------------------------------------------------------------------

  renderRecord() {
    const hold = el("button", "tlcam-button tlcam-hold", "Hold to record");
    hold.setAttribute("data-testid", "tlcam-hold");
    const toggle = el("button", "tlcam-button", "Start recording");
    toggle.setAttribute("data-testid", "tlcam-toggle");
    const down = (e) => {
      e.preventDefault();
      this.startRecording();
    };
    const up = () => {
      if (this.holding) this.stopRecording();
    };
    hold.addEventListener("pointerdown", (e) => {
      this.holding = true;
      down(e);
    });
    ["pointerup", "pointerleave", "pointercancel"].forEach((ev) => hold.addEventListener(ev, up));
    toggle.addEventListener("click", () => {
      if (this.recording) this.stopRecording();
      else this.startRecording();
    });
    this.holdButton = hold;
    this.toggleButton = toggle;
    this.controls.append(hold, toggle);
    this.onRecordData();
  }

  startRecording() {
    const label = this.data.label;
    if (!label || this.recording || this.status !== "ready") return;
    this.recording = true;
    this.recordLabel = label;
    this.recordingId = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    this.shotsThisTime = 0;
    const fps = Math.max(1, Math.min(15, Number(this.data.fps) || 8));
    const capture = () => {
      if (!this.recording) return;
      const frame = this.grab(Number(this.data.side) || 320, 0.85);
      if (frame) {
        this.queue.push({ label: this.recordLabel, recording: this.recordingId, frame, at: Date.now() });
        this.shotsThisTime += 1;
      }
      this.flush();
      this.showRecordInfo();
    };
    capture();
    this.captureTimer = setInterval(capture, 1000 / fps);
    this.showRecordInfo();
  }

  stopRecording() {
    this.holding = false;
    if (!this.recording) return;
    this.recording = false;
    clearInterval(this.captureTimer);
    this.captureTimer = null;
    this.flush(true);
    this.showRecordInfo();
  }

  flush(force) {
    if (this.inflight) {
      // no answer for a long time (a lost message): send the same batch again
      if (Date.now() - this.inflight.sentAt > 6000) this.send(this.inflight.batch);
      return;
    }
    if (!this.queue.length) return;
    // small batches, not one message per frame: four frames, or what waited 0.7 s
    if (!force && this.queue.length < 4 && Date.now() - this.queue[0].at < 700) return;
    const head = this.queue[0];
    const same = [];
    while (
      same.length < 12 &&
      this.queue.length &&
      this.queue[0].label === head.label &&
      this.queue[0].recording === head.recording
    ) {
      same.push(this.queue.shift().frame);
    }
    this.seq += 1;
    const batch = { id: this.id, seq: this.seq, label: head.label, recording: head.recording };
    this.send({ ...batch, frames: same });
  }

  send(batch) {
    this.inflight = { seq: batch.seq, sentAt: Date.now(), batch };
    this.api.setTriggerValue("frames", batch);
  }

  onRecordData() {
    const ack = this.data.ack || {};
    if (this.inflight && ack.id === this.id && Number(ack.seq) >= this.inflight.seq) {
      this.inflight = null;
      this.flush(!this.recording);
    }
    if (this.recording && this.data.label !== this.recordLabel) this.stopRecording();
    if (this.holdButton) {
      const off = !this.data.label;
      this.holdButton.disabled = off;
      this.toggleButton.disabled = off;
    }
    this.showRecordInfo();
  }

  showRecordInfo() {
    if (!this.toggleButton) return;
    this.toggleButton.textContent = this.recording ? "Stop recording" : "Start recording";
    this.box.classList.toggle("tlcam-recording", this.recording);
    const waiting = this.queue.length + (this.inflight ? this.inflight.batch.frames.length : 0);
    const label = this.data.label;
    let text;
    if (!label) text = "Add a class first: its name is what the shots are of.";
    else if (this.recording) text = `● Recording '${this.recordLabel}': ${this.shotsThisTime} shots`;
    else text = `Shots go into '${label}'.`;
    if (waiting) text += ` · ${waiting} on the way to the server`;
    this.info.textContent = text;
  }

  // ---- live --------------------------------------------------------------------------------

  renderLive() {
    const pause = el("button", "tlcam-button", this.paused ? "Resume" : "Pause");
    pause.setAttribute("data-testid", "tlcam-pause");
    pause.addEventListener("click", () => {
      this.paused = !this.paused;
      pause.textContent = this.paused ? "Resume" : "Pause";
      this.box.classList.toggle("tlcam-paused", this.paused);
      if (this.paused) this.video.pause();
      else {
        this.video.play().catch(() => {});
        this.answers = [];
        this.next();
      }
    });
    this.controls.append(pause);
    this.next();
  }

  next() {
    if (this.data.mode !== "live" || this.paused || this.status !== "ready") return;
    if (this.waiting && Date.now() - this.waiting.sentAt < 6000) return;
    if (this.data.endpoint && !this.noRoute) {
      this.ask();
      return;
    }
    const image = this.grab(Number(this.data.side) || 320, 0.8);
    if (!image) {
      setTimeout(() => this.next(), 100);
      return;
    }
    this.seq += 1;
    this.waiting = { seq: this.seq, sentAt: Date.now() };
    this.api.setTriggerValue("frame", { id: this.id, seq: this.seq, image });
  }

  // The studio's live route (app.py): the frame as a JPEG body, the answer as JSON, no rerun.
  // A server without the route (404, 405) gets frames as trigger values from then on.
  async ask() {
    this.seq += 1;
    const seq = this.seq;
    this.waiting = { seq, sentAt: Date.now() };
    const blob = await this.grabBlob(Number(this.data.side) || 320, 0.8);
    if (!blob) {
      this.waiting = null;
      setTimeout(() => this.next(), 100);
      return;
    }
    let answer;
    let again = true;
    try {
      const res = await fetch(this.data.endpoint, {
        method: "POST",
        body: blob,
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Content-Type": "image/jpeg", [this.data.header]: this.data.token },
      });
      if (res.status === 404 || res.status === 405) this.noRoute = true;
      else answer = await res.json();
      // an expired token, or a model deleted since (410), waits for the page to draw the
      // view again (new data, a new grant)
      if (res.status === 403 || res.status === 410) again = false;
    } catch (_err) {
      answer = { error: "The server did not answer; trying again." };
    }
    if (!this.waiting || this.waiting.seq !== seq) return; // overtaken (timed out)
    this.waiting = null;
    // superseded (409): a newer frame of this view came first; nothing to draw, ask again
    if (answer && answer.superseded) answer = null;
    if (answer) this.show({ ...answer, id: this.id, seq });
    if (!again) return;
    // at most one frame every MIN_GAP_MS: the bars move smoothly and the server keeps room
    const wait = answer && answer.error ? 500 : Math.max(0, MIN_GAP_MS - (performance.now() - this.lastAsked));
    this.lastAsked = performance.now() + wait;
    setTimeout(() => this.next(), wait);
  }

  // One JPEG Blob of the current video picture (see grab), or null before the first picture.
  grabBlob(side, quality) {
    if (!this.draw(side)) return Promise.resolve(null);
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/jpeg", quality));
  }

  // A new answer: the bars, the verdict and the rate of the last three seconds.
  show(answer) {
    const key = `${answer.id}:${answer.seq}`;
    if (key === this.lastShown) return;
    this.lastShown = key;
    this.answered = (this.answered || 0) + 1;
    this.verdict.setAttribute("data-n", String(this.answered));
    this.drawAnswer(answer);
    const now = performance.now();
    this.answers.push(now);
    while (this.answers.length && now - this.answers[0] > 3000) this.answers.shift();
    if (this.answers.length >= 2) {
      const span = (this.answers[this.answers.length - 1] - this.answers[0]) / 1000;
      const rate = span > 0 ? (this.answers.length - 1) / span : 0;
      this.rate.textContent = `${rate.toFixed(1)} guesses per second`;
      this.rate.setAttribute("data-rate", rate.toFixed(2));
    }
  }

  onLiveData() {
    const answer = this.data.answer;
    if (answer) this.show(answer);
    if (this.data.endpoint && !this.noRoute) {
      if (!this.waiting) this.next();
      return;
    }
    if (this.waiting && answer && answer.id === this.id && answer.seq === this.waiting.seq) {
      this.waiting = null;
      requestAnimationFrame(() => this.next());
    } else if (!this.waiting) {
      this.next();
    }
  }

  drawAnswer(answer) {
    if (answer.error) {
      this.verdict.textContent = answer.error;
      this.verdict.className = "tlcam-verdict tlcam-unsure";
      this.verdict.setAttribute("data-unfamiliar", "0");
      return;
    }
    // unfamiliar: unlike every training picture, so no class answer (the bars only say which
    // class is nearest, greyed); it wins over "not sure" and over a sure class
    const unfamiliar = answer.unfamiliar === true;
    const text = answer.verdict || "";
    if (unfamiliar && text.startsWith(UNFAMILIAR_WORD)) {
      this.verdict.replaceChildren(
        el("strong", "tlcam-unfamiliar-word", UNFAMILIAR_WORD),
        document.createTextNode(text.slice(UNFAMILIAR_WORD.length)),
      );
    } else {
      this.verdict.textContent = text;
    }
    const kind = unfamiliar ? "tlcam-unfamiliar" : answer.sure ? "tlcam-sure" : "tlcam-unsure";
    this.verdict.className = `tlcam-verdict ${kind}`;
    this.verdict.setAttribute("data-unfamiliar", unfamiliar ? "1" : "0");
    this.verdict.setAttribute("data-guess", answer.sure && !unfamiliar ? answer.top : "");
    this.verdict.setAttribute("data-top", answer.top || "");
    this.bars.classList.toggle("tlcam-unfamiliar", unfamiliar);
    const rows = (answer.bars || []).map(([name, p]) => {
      const row = el("div", "tlcam-bar");
      const label = el("span", "tlcam-bar-label", name);
      const track = el("span", "tlcam-bar-track");
      const fill = el("span", "tlcam-bar-fill");
      fill.style.width = `${Math.round(p * 100)}%`;
      if (name === answer.top && answer.sure && !unfamiliar) fill.classList.add("tlcam-bar-top");
      track.appendChild(fill);
      row.append(label, track, el("span", "tlcam-bar-value", `${Math.round(p * 100)}%`));
      return row;
    });
    if (answer.threshold !== undefined) {
      const check = answer.unfamiliar_threshold == null ? "off" : "on";
      const note = el(
        "div",
        "tlcam-threshold",
        `'Not sure' below ${Math.round(answer.threshold * 100)}% · Unfamiliar check ${check}`,
      );
      rows.push(note);
    }
    this.bars.replaceChildren(...rows);
  }

  tick() {
    // record mode: a batch left waiting (the server was busy) goes out when it can
    this.timers.push(
      setInterval(() => {
        if (this.data.mode === "record") this.flush(!this.recording);
        else if (!this.paused && this.waiting && Date.now() - this.waiting.sentAt > 6000) {
          this.waiting = null;
          this.next();
        }
      }, 500),
    );
  }
}

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  let cam = instances.get(parentElement);
  const api = { setStateValue, setTriggerValue };
  if (!cam) {
    cam = new Camera(parentElement, api);
    instances.set(parentElement, cam);
  }
  cam.api = api;
  cam.update(data || {});
  cam.gen += 1;
  const gen = cam.gen;
  // Streamlit keeps only the last cleanup and runs it when the element goes away; one from a
  // call overtaken by a newer one can run early, so it acts only if no newer call came.
  return () => {
    setTimeout(() => {
      if (cam.gen === gen && !parentElement.isConnected) cam.destroy();
    }, 50);
  };
}
