// The studio's picture map: up to tens of thousands of dots on a plain canvas, coloured by label.
//
// Streamlit calls the default function again with new `data` after every rerun of the script
// that mounts it, with the same parentElement: one instance per parentElement keeps the view,
// the selection and the decoded points; the points are decoded again only when data.sig says
// they changed (tl_ui/picture_map.py, map_payload).
//
// Drawing: the dots are written straight into an ImageData (a small antialiased disc stamped
// per dot) and put on the canvas once per change of view, points or selection; hover rings,
// the box and the lasso go on a second canvas above it, redrawn on their own. Hover finds the
// nearest dot through a grid over the unit square, at most once a frame.
//
// The selection goes back as the state value "selection": {id, indices} (indices sorted), or
// null when cleared here. data.selection (the server's last value) is taken over only by a
// fresh view that has none of its own; data.cleared names a selection the page cleared.
// For tests: data-view on the root is "ox,oy,scale": a point (x, y) of the unit square is
// drawn at (ox + x * scale, oy - y * scale) CSS pixels from the canvas' top-left corner.

const instances = new WeakMap();
const DOT = 2.6; // a dot's radius in CSS pixels, at zoom 1
const HOVER_PX = 10; // hover and click reach
const GRID = 128; // cells a side of the hover grid
const PAD = 14; // CSS pixels around the unit square when fitted
const MIN_ZOOM = 0.5;
const MAX_ZOOM = 400;
const CLICK_PX = 4; // a drag shorter than this is a click
const HIGHLIGHT_RGB = [255, 75, 75];

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function bytesOf(b64) {
  const bin = atob(b64 || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

function typed(b64, Kind) {
  const bytes = bytesOf(b64);
  return new Kind(bytes.buffer, 0, Math.floor(bytes.length / Kind.BYTES_PER_ELEMENT));
}

function rgbOf(text) {
  const hex = /^#?([0-9a-f]{6})$/i.exec(text || "");
  if (hex) {
    const v = parseInt(hex[1], 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }
  const parts = /rgba?\(([^)]+)\)/.exec(text || "");
  if (parts) {
    const [r, g, b, a] = parts[1].split(",").map((s) => parseFloat(s));
    if (a === undefined || a > 0) return [r, g, b];
  }
  return null;
}

// A disc of radius r (device pixels) as [dx, dy, coverage] triples, or a ring r..outer.
const stamps = new Map();
function stamp(r, outer) {
  const key = `${r.toFixed(2)}:${(outer || 0).toFixed(2)}`;
  if (stamps.has(key)) return stamps.get(key);
  const reach = Math.ceil(outer || r) + 1;
  const out = [];
  const sub = 4;
  for (let dy = -reach; dy <= reach; dy += 1) {
    for (let dx = -reach; dx <= reach; dx += 1) {
      let hit = 0;
      for (let sy = 0; sy < sub; sy += 1) {
        for (let sx = 0; sx < sub; sx += 1) {
          const x = dx - 0.5 + (sx + 0.5) / sub;
          const y = dy - 0.5 + (sy + 0.5) / sub;
          const d = Math.sqrt(x * x + y * y);
          if (outer ? d >= r && d <= outer : d <= r) hit += 1;
        }
      }
      if (hit) out.push(dx, dy, hit / (sub * sub));
    }
  }
  const packed = new Float32Array(out);
  stamps.set(key, packed);
  return packed;
}

// A fixed shuffle (the same for the same n), so no label is always drawn over the others.
function shuffled(list) {
  let seed = list.length * 2654435761 + 1;
  for (let i = list.length - 1; i > 0; i -= 1) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    const j = seed % (i + 1);
    [list[i], list[j]] = [list[j], list[i]];
  }
  return list;
}

function inPolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 2; i < poly.length; j = i, i += 2) {
    const xi = poly[i];
    const yi = poly[i + 1];
    const xj = poly[j];
    const yj = poly[j + 1];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function newId() {
  return `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

class PictureMap {
  constructor(root, api) {
    this.root = root;
    this.api = api;
    this.gen = 0;
    this.sig = null;
    this.n = 0;
    this.mode = "box";
    this.view = { zoom: 1, cx: 0.5, cy: 0.5 };
    this.selection = null; // {id, mask: Uint8Array, count}
    this.touched = false; // the selection was made or cleared here
    this.highlight = new Uint8Array(0);
    this.hover = -1;
    this.drag = null;
    this.pointer = null;
    this.space = false;
    this.inside = false;
    this.drawPending = false;
    this.marksPending = false;
    this.hoverPending = false;
    this.build();
    this.listen();
  }

  build() {
    const box = el("div", "tlmap");
    box.setAttribute("data-testid", "tlmap");
    const bar = el("div", "tlmap-bar");
    this.modeButtons = {};
    const modes = [
      ["box", "Box", "Drag a rectangle to select the pictures inside it"],
      ["lasso", "Lasso", "Draw around the pictures to select them"],
      ["pan", "Pan", "Drag to move the map"],
    ];
    for (const [mode, label, title] of modes) {
      const b = el("button", "tlmap-button", label);
      b.type = "button";
      b.title = title;
      b.setAttribute("data-testid", `tlmap-${mode}`);
      b.addEventListener("click", () => this.setMode(mode));
      this.modeButtons[mode] = b;
      bar.appendChild(b);
    }
    const fit = el("button", "tlmap-button", "Fit");
    fit.type = "button";
    fit.title = "Show the whole map (or double-click it)";
    fit.setAttribute("data-testid", "tlmap-fit");
    fit.addEventListener("click", () => this.fit());
    this.clearButton = el("button", "tlmap-button", "Clear selection");
    this.clearButton.type = "button";
    this.clearButton.setAttribute("data-testid", "tlmap-clear");
    this.clearButton.addEventListener("click", () => this.clear());
    this.status = el("span", "tlmap-status");
    this.status.setAttribute("data-testid", "tlmap-status");
    bar.append(el("span", "tlmap-gap"), fit, this.clearButton, this.status);

    const body = el("div", "tlmap-body");
    this.stage = el("div", "tlmap-stage");
    this.dots = el("canvas", "tlmap-dots");
    this.marks = el("canvas", "tlmap-marks");
    this.marks.setAttribute("data-testid", "tlmap-canvas");
    this.marks.setAttribute("role", "img");
    this.tip = el("div", "tlmap-tip");
    this.tip.setAttribute("data-testid", "tlmap-tip");
    this.tipImg = el("img", "tlmap-tip-img");
    this.tipImg.alt = "";
    this.tipImg.addEventListener("load", () => {
      const img = this.tipImg;
      // a tiny picture (28 px) is shown larger with its pixels sharp, not blurred
      img.classList.toggle("tlmap-tiny", Math.max(img.naturalWidth, img.naturalHeight) < 64);
      img.classList.add("tlmap-loaded");
    });
    this.tipImg.addEventListener("error", () => this.tipImg.classList.remove("tlmap-loaded"));
    this.tipText = el("div", "tlmap-tip-text");
    this.tipLabel = el("div", "tlmap-tip-label");
    this.tip.append(this.tipImg, this.tipText, this.tipLabel);
    this.stage.append(this.dots, this.marks, this.tip);
    this.legend = el("div", "tlmap-legend");
    this.legend.setAttribute("data-testid", "tlmap-legend");
    body.append(this.stage, this.legend);
    const hint = el(
      "div",
      "tlmap-hint",
      "Wheel: zoom · Shift: add to the selection · Space or middle button + drag: move · " +
        "Double-click: whole map · Click a label in the legend to select its pictures",
    );
    box.append(bar, body, hint);
    this.root.appendChild(box);
    this.box = box;
    this.setMode("box");
  }

  listen() {
    const m = this.marks;
    m.addEventListener("pointerdown", (e) => this.down(e));
    m.addEventListener("pointermove", (e) => this.move(e));
    m.addEventListener("pointerup", (e) => this.up(e));
    m.addEventListener("pointercancel", () => this.cancel());
    m.addEventListener("pointerenter", () => (this.inside = true));
    m.addEventListener("pointerleave", () => {
      this.inside = false;
      if (!this.drag) this.setHover(-1);
    });
    m.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    m.addEventListener("dblclick", () => this.fit());
    m.addEventListener("contextmenu", (e) => e.preventDefault());
    this.onKeyDown = (e) => {
      if (e.code === "Space" && this.inside) {
        this.space = true;
        this.marks.style.cursor = "grab";
        e.preventDefault();
      } else if (e.key === "Escape" && this.drag) {
        this.cancel();
      }
    };
    this.onKeyUp = (e) => {
      if (e.code === "Space") {
        this.space = false;
        this.marks.style.cursor = "";
      }
    };
    window.addEventListener("keydown", this.onKeyDown);
    window.addEventListener("keyup", this.onKeyUp);
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.stage);
  }

  destroy() {
    window.removeEventListener("keydown", this.onKeyDown);
    window.removeEventListener("keyup", this.onKeyUp);
    this.resizer.disconnect();
    instances.delete(this.root);
  }

  setMode(mode) {
    this.mode = mode;
    for (const [name, b] of Object.entries(this.modeButtons)) {
      b.setAttribute("aria-pressed", name === mode ? "true" : "false");
    }
    this.box.setAttribute("data-mode", mode);
  }

  // ---- data --------------------------------------------------------------------------------

  update(data) {
    this.data = data;
    const height = Math.max(240, Number(data.height) || 560);
    this.box.style.height = `${height}px`;
    if (data.sig !== this.sig) this.load(data);
    this.thumbs = data.thumbs || "";
    const marked = typed(data.highlight, Uint32Array);
    this.highlight = new Uint8Array(this.n);
    for (const i of marked) if (i < this.n) this.highlight[i] = 1;
    const given = data.selection;
    if (!this.touched && !this.selection && given && given.id !== data.cleared) {
      this.selection = this.maskOf(given.indices || [], given.id);
    }
    if (this.selection && this.selection.id === data.cleared) this.selection = null;
    this.showStatus();
    this.schedule();
  }

  load(data) {
    this.sig = data.sig;
    const n = Number(data.n) || 0;
    const q = typed(data.xy, Uint16Array);
    const groups = typed(data.groups, Int16Array);
    this.n = Math.min(n, q.length >> 1, groups.length);
    this.x = new Float32Array(this.n);
    this.y = new Float32Array(this.n);
    for (let i = 0; i < this.n; i += 1) {
      this.x[i] = q[2 * i] / 65535;
      this.y[i] = q[2 * i + 1] / 65535;
    }
    this.groups = groups.slice(0, this.n);
    this.names = data.names || [];
    this.colours = (data.colours || []).map((c) => rgbOf(c) || [80, 80, 80]);
    this.grey = rgbOf(data.unlabelled_colour) || [185, 190, 199];
    this.texts = String(data.texts || "").split("\n");
    const under = [];
    const over = [];
    for (let i = 0; i < this.n; i += 1) (this.groups[i] < 0 ? under : over).push(i);
    this.order = Uint32Array.from([...under, ...shuffled(over)]);
    this.buildGrid();
    if (this.selection) {
      const kept = [];
      for (let i = 0; i < Math.min(this.n, this.selection.mask.length); i += 1) {
        if (this.selection.mask[i]) kept.push(i);
      }
      this.selection = this.maskOf(kept, this.selection.id);
    }
    this.buildLegend();
    this.box.setAttribute("data-n", String(this.n));
    this.marks.setAttribute("aria-label", `A map of ${this.n.toLocaleString()} pictures, coloured by label`);
    this.setHover(-1);
  }

  buildGrid() {
    const cells = new Uint32Array(GRID * GRID + 1);
    const cellOf = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i += 1) {
      const cx = Math.min(GRID - 1, Math.floor(this.x[i] * GRID));
      const cy = Math.min(GRID - 1, Math.floor(this.y[i] * GRID));
      cellOf[i] = cy * GRID + cx;
      cells[cellOf[i] + 1] += 1;
    }
    for (let c = 0; c < GRID * GRID; c += 1) cells[c + 1] += cells[c];
    const fill = cells.slice(0, GRID * GRID);
    const items = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i += 1) items[fill[cellOf[i]]++] = i;
    this.cellStart = cells;
    this.cellItems = items;
  }

  buildLegend() {
    const counts = new Map();
    for (let i = 0; i < this.n; i += 1) counts.set(this.groups[i], (counts.get(this.groups[i]) || 0) + 1);
    const rows = [];
    const row = (group, name, rgb) => {
      const line = el("button", "tlmap-legend-row");
      line.type = "button";
      line.title = `Select the pictures of '${name}' (Shift: add them)`;
      line.setAttribute("data-group", String(group));
      const swatch = el("span", "tlmap-swatch");
      swatch.style.background = `rgb(${rgb.join(",")})`;
      line.append(swatch, el("span", "tlmap-legend-name", name));
      line.append(el("span", "tlmap-legend-count", (counts.get(group) || 0).toLocaleString()));
      line.addEventListener("click", (e) => this.selectGroup(group, e.shiftKey));
      rows.push(line);
    };
    this.names.forEach((name, k) => row(k, name, this.colours[k] || [80, 80, 80]));
    if (counts.get(-1)) row(-1, this.data.unlabelled || "Unlabelled", this.grey);
    this.legend.replaceChildren(...rows);
  }

  // ---- view --------------------------------------------------------------------------------

  resize() {
    const w = Math.max(1, this.stage.clientWidth);
    const h = Math.max(1, this.stage.clientHeight);
    const dpr = Math.min(2, window.devicePixelRatio || 1);
    for (const c of [this.dots, this.marks]) {
      c.style.width = `${w}px`;
      c.style.height = `${h}px`;
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    this.w = w;
    this.h = h;
    this.dpr = c2dpr(this.dots, w);
    this.schedule();
  }

  // CSS pixels: px = ox + x * scale, py = oy - y * scale
  transform() {
    const scale = Math.max(1, Math.min(this.w, this.h) - 2 * PAD) * this.view.zoom;
    const ox = this.w / 2 - this.view.cx * scale;
    const oy = this.h / 2 + this.view.cy * scale;
    return { ox, oy, scale };
  }

  toData(px, py) {
    const t = this.transform();
    return [(px - t.ox) / t.scale, (t.oy - py) / t.scale];
  }

  fit() {
    this.view = { zoom: 1, cx: 0.5, cy: 0.5 };
    this.schedule();
  }

  wheel(e) {
    e.preventDefault();
    const [px, py] = this.local(e);
    const [x, y] = this.toData(px, py);
    const step = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, this.view.zoom * Math.exp(-step * 0.0015)));
    this.view.zoom = zoom;
    const scale = this.transform().scale;
    this.view.cx = x - (px - this.w / 2) / scale;
    this.view.cy = y + (py - this.h / 2) / scale;
    this.schedule();
    this.pointer = [px, py];
    this.scheduleHover();
  }

  schedule() {
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      if (!this.w) this.resize();
      this.drawDots();
      this.drawMarks();
    });
  }

  scheduleMarks() {
    if (this.marksPending) return;
    this.marksPending = true;
    requestAnimationFrame(() => {
      this.marksPending = false;
      this.drawMarks();
    });
  }

  // ---- drawing -----------------------------------------------------------------------------

  background() {
    const found = rgbOf(getComputedStyle(this.stage).backgroundColor);
    return found || [255, 255, 255];
  }

  drawDots() {
    const started = performance.now();
    const c = this.dots;
    const W = c.width;
    const H = c.height;
    if (!W || !H) return;
    const ctx = c.getContext("2d");
    if (!this.image || this.image.width !== W || this.image.height !== H) {
      this.image = ctx.createImageData(W, H);
    }
    const px = this.image.data;
    const [br, bg, bb] = this.background();
    for (let k = 0; k < px.length; k += 4) {
      px[k] = br;
      px[k + 1] = bg;
      px[k + 2] = bb;
      px[k + 3] = 255;
    }
    const t = this.transform();
    const d = this.dpr;
    // smaller dots when there are many, larger when zoomed in
    const crowd = Math.min(1, Math.max(0.7, Math.pow(4000 / Math.max(1, this.n), 0.25)));
    const r = DOT * d * crowd * Math.min(3, Math.max(1, Math.pow(this.view.zoom, 0.35)));
    const disc = stamp(r);
    const put = (i, rgb, shape, alpha) => {
      const cx = Math.round((t.ox + this.x[i] * t.scale) * d);
      const cy = Math.round((t.oy - this.y[i] * t.scale) * d);
      if (cx < -12 || cy < -12 || cx > W + 12 || cy > H + 12) return;
      for (let s = 0; s < shape.length; s += 3) {
        const x = cx + shape[s];
        const y = cy + shape[s + 1];
        if (x < 0 || y < 0 || x >= W || y >= H) continue;
        const a = shape[s + 2] * alpha;
        const k = (y * W + x) * 4;
        px[k] += (rgb[0] - px[k]) * a;
        px[k + 1] += (rgb[1] - px[k + 1]) * a;
        px[k + 2] += (rgb[2] - px[k + 2]) * a;
      }
    };
    const colourOf = (i) => (this.groups[i] < 0 ? this.grey : this.colours[this.groups[i]] || this.grey);
    // with a selection the other dots fade, and a large selection gets fainter rings
    const sel = this.selection ? this.selection.mask : null;
    const fade = sel ? 0.3 : 1;
    for (const i of this.order) put(i, colourOf(i), disc, (this.groups[i] < 0 ? 0.75 : 0.88) * fade);
    const ring = stamp(r, r + 1.4 * d);
    const ringAlpha = sel && this.selection.count > 1500 ? 0.45 : 0.95;
    const halo = stamp(r + 1.6 * d, r + 3.4 * d);
    const ink = rgbOf(getComputedStyle(this.box).color) || [20, 20, 20];
    this.ink = ink;
    for (const i of this.order) {
      const marked = this.highlight[i];
      const chosen = sel && sel[i];
      if (!marked && !chosen) continue;
      if (marked) put(i, HIGHLIGHT_RGB, halo, 1);
      put(i, colourOf(i), disc, 1);
      if (chosen) put(i, ink, ring, ringAlpha);
    }
    ctx.putImageData(this.image, 0, 0);
    this.box.setAttribute("data-view", `${t.ox},${t.oy},${t.scale}`);
    this.drawn = (this.drawn || 0) + 1;
    this.box.setAttribute("data-drawn", String(this.drawn));
    this.box.setAttribute("data-draw-ms", (performance.now() - started).toFixed(1));
  }

  drawMarks() {
    const c = this.marks;
    const ctx = c.getContext("2d");
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.w, this.h);
    const t = this.transform();
    if (this.hover >= 0) {
      ctx.beginPath();
      const x = t.ox + this.x[this.hover] * t.scale;
      const y = t.oy - this.y[this.hover] * t.scale;
      ctx.arc(x, y, 7, 0, 2 * Math.PI);
      ctx.lineWidth = 2;
      ctx.strokeStyle = `rgba(${(this.ink || [20, 20, 20]).join(",")},0.85)`;
      ctx.stroke();
    }
    const drag = this.drag;
    if (!drag || drag.kind === "pan") return;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([5, 4]);
    ctx.strokeStyle = `rgba(${(this.ink || [30, 30, 30]).join(",")},0.9)`;
    ctx.fillStyle = "rgba(255,75,75,0.08)";
    ctx.beginPath();
    if (drag.kind === "box") {
      const [x0, y0] = drag.start;
      const [x1, y1] = drag.end;
      ctx.rect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    } else {
      drag.path.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
    }
    ctx.fill();
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // ---- pointer -----------------------------------------------------------------------------

  local(e) {
    const rect = this.marks.getBoundingClientRect();
    return [e.clientX - rect.left, e.clientY - rect.top];
  }

  down(e) {
    if (e.button !== 0 && e.button !== 1) return;
    e.preventDefault();
    this.marks.setPointerCapture(e.pointerId);
    const p = this.local(e);
    const pan = e.button === 1 || this.space || this.mode === "pan";
    const kind = pan ? "pan" : this.mode;
    this.drag = { kind, start: p, end: p, path: [p], add: e.shiftKey, view: { ...this.view } };
    this.setHover(-1);
    this.box.classList.toggle("tlmap-panning", pan);
  }

  move(e) {
    const p = this.local(e);
    this.pointer = p;
    const drag = this.drag;
    if (!drag) {
      this.scheduleHover();
      return;
    }
    drag.end = p;
    if (drag.kind === "pan") {
      const scale = this.transform().scale;
      this.view.cx = drag.view.cx - (p[0] - drag.start[0]) / scale;
      this.view.cy = drag.view.cy + (p[1] - drag.start[1]) / scale;
      this.schedule();
      return;
    }
    if (drag.kind === "lasso") {
      const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
      for (const ev of events.length ? events : [e]) drag.path.push(this.local(ev));
    }
    this.scheduleMarks();
  }

  up(e) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    this.box.classList.remove("tlmap-panning");
    const p = this.local(e);
    drag.end = p;
    const moved = Math.max(Math.abs(p[0] - drag.start[0]), Math.abs(p[1] - drag.start[1]));
    if (drag.kind === "pan") {
      this.scheduleMarks();
      return;
    }
    if (moved < CLICK_PX) {
      const i = this.nearest(p[0], p[1]);
      if (i >= 0) this.commit([i], drag.add, true);
    } else if (drag.kind === "box") {
      this.commit(this.inBox(drag.start, drag.end), drag.add, false);
    } else {
      drag.path.push(p);
      this.commit(this.inLasso(drag.path), drag.add, false);
    }
    this.scheduleMarks();
  }

  cancel() {
    this.drag = null;
    this.box.classList.remove("tlmap-panning");
    this.scheduleMarks();
  }

  // ---- hover -------------------------------------------------------------------------------

  scheduleHover() {
    if (this.hoverPending) return;
    this.hoverPending = true;
    requestAnimationFrame(() => {
      this.hoverPending = false;
      if (this.drag || !this.pointer || !this.inside) return;
      this.setHover(this.nearest(this.pointer[0], this.pointer[1]));
    });
  }

  nearest(px, py) {
    if (!this.n) return -1;
    const t = this.transform();
    const [x, y] = this.toData(px, py);
    const reach = HOVER_PX / t.scale;
    const cell = (v) => Math.min(GRID - 1, Math.max(0, Math.floor(v * GRID)));
    if (x + reach < 0 || x - reach > 1 || y + reach < 0 || y - reach > 1) return -1;
    let best = -1;
    let bestD = HOVER_PX * HOVER_PX;
    for (let cy = cell(y - reach); cy <= cell(y + reach); cy += 1) {
      for (let cx = cell(x - reach); cx <= cell(x + reach); cx += 1) {
        const c = cy * GRID + cx;
        for (let k = this.cellStart[c]; k < this.cellStart[c + 1]; k += 1) {
          const i = this.cellItems[k];
          const dx = (this.x[i] - x) * t.scale;
          const dy = (this.y[i] - y) * t.scale;
          const d = dx * dx + dy * dy;
          if (d < bestD || (d === bestD && this.groups[i] >= 0)) {
            best = i;
            bestD = d;
          }
        }
      }
    }
    return best;
  }

  setHover(i) {
    if (i === this.hover) return;
    this.hover = i;
    this.box.setAttribute("data-hover", String(i));
    this.scheduleMarks();
    if (i < 0) {
      this.tip.classList.remove("tlmap-shown");
      return;
    }
    const group = this.groups[i];
    const name = group < 0 ? this.data.unlabelled || "Unlabelled" : this.names[group] || "";
    this.tipText.textContent = this.texts[i] || `Picture ${i + 1}`;
    this.tipLabel.textContent = name;
    const rgb = group < 0 ? this.grey : this.colours[group] || this.grey;
    this.tipLabel.style.setProperty("--tlmap-label", `rgb(${rgb.join(",")})`);
    if (this.thumbs) {
      const src = `${this.thumbs}${i}`;
      if (this.tipImg.getAttribute("src") !== src) {
        this.tipImg.classList.remove("tlmap-loaded");
        this.tipImg.src = src;
      }
      this.tipImg.style.display = "";
    } else {
      this.tipImg.style.display = "none";
    }
    this.tip.classList.add("tlmap-shown");
    this.placeTip(i);
  }

  placeTip(i) {
    const t = this.transform();
    const x = t.ox + this.x[i] * t.scale;
    const y = t.oy - this.y[i] * t.scale;
    const tw = this.tip.offsetWidth || 160;
    const th = this.tip.offsetHeight || 180;
    let left = x + 14;
    let top = y + 14;
    if (left + tw > this.w) left = Math.max(0, x - 14 - tw);
    if (top + th > this.h) top = Math.max(0, y - 14 - th);
    this.tip.style.left = `${left}px`;
    this.tip.style.top = `${top}px`;
  }

  // ---- selection ---------------------------------------------------------------------------

  inBox(a, b) {
    const [x0, y0] = this.toData(Math.min(a[0], b[0]), Math.max(a[1], b[1]));
    const [x1, y1] = this.toData(Math.max(a[0], b[0]), Math.min(a[1], b[1]));
    const found = [];
    for (let i = 0; i < this.n; i += 1) {
      if (this.x[i] >= x0 && this.x[i] <= x1 && this.y[i] >= y0 && this.y[i] <= y1) found.push(i);
    }
    return found;
  }

  inLasso(path) {
    const poly = new Float64Array(path.length * 2);
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    path.forEach(([px, py], k) => {
      const [x, y] = this.toData(px, py);
      poly[2 * k] = x;
      poly[2 * k + 1] = y;
      x0 = Math.min(x0, x);
      y0 = Math.min(y0, y);
      x1 = Math.max(x1, x);
      y1 = Math.max(y1, y);
    });
    const found = [];
    for (let i = 0; i < this.n; i += 1) {
      const x = this.x[i];
      const y = this.y[i];
      if (x < x0 || x > x1 || y < y0 || y > y1) continue;
      if (inPolygon(x, y, poly)) found.push(i);
    }
    return found;
  }

  selectGroup(group, add) {
    const found = [];
    for (let i = 0; i < this.n; i += 1) if (this.groups[i] === group) found.push(i);
    this.commit(found, add, false);
  }

  maskOf(indices, id) {
    const mask = new Uint8Array(this.n);
    let count = 0;
    for (const i of indices) {
      if (Number.isInteger(i) && i >= 0 && i < this.n && !mask[i]) {
        mask[i] = 1;
        count += 1;
      }
    }
    return count ? { id, mask, count } : null;
  }

  // A new selection: `found` (with `add`: added to the current one, a click's single dot
  // toggled), sent to the server with a new id.
  commit(found, add, toggle) {
    let indices = found;
    if (add && this.selection) {
      const mask = this.selection.mask.slice();
      for (const i of found) mask[i] = toggle ? 1 - mask[i] : 1;
      indices = [];
      for (let i = 0; i < this.n; i += 1) if (mask[i]) indices.push(i);
    }
    this.touched = true;
    const id = newId();
    this.selection = this.maskOf(indices, id);
    const sorted = Int32Array.from(indices).sort();
    this.api.setStateValue("selection", this.selection ? { id, indices: Array.from(sorted) } : null);
    this.showStatus();
    this.schedule();
  }

  clear() {
    this.touched = true;
    if (!this.selection) return;
    this.selection = null;
    this.api.setStateValue("selection", null);
    this.showStatus();
    this.schedule();
  }

  showStatus() {
    const count = this.selection ? this.selection.count : 0;
    const all = this.n.toLocaleString();
    this.status.textContent = count
      ? `${count.toLocaleString()} of ${all} pictures selected`
      : `${all} pictures · drag to select`;
    this.status.setAttribute("data-count", String(count));
    this.clearButton.disabled = !count;
  }
}

// The device-pixel ratio the canvas really got (its width over its CSS width).
function c2dpr(canvas, cssWidth) {
  return cssWidth ? canvas.width / cssWidth : 1;
}

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  let map = instances.get(parentElement);
  const api = { setStateValue, setTriggerValue };
  if (!map) {
    map = new PictureMap(parentElement, api);
    instances.set(parentElement, map);
  }
  map.api = api;
  map.update(data || {});
  map.gen += 1;
  const gen = map.gen;
  // Streamlit keeps only the last cleanup and runs it when the element goes away; one from a
  // call overtaken by a newer one can run early, so it acts only if no newer call came.
  return () => {
    setTimeout(() => {
      if (map.gen === gen && !parentElement.isConnected) map.destroy();
    }, 50);
  };
}
