// The mask editor: runs as the `js_on_load` of a gr.HTML component (`element`, `props`,
// `trigger` and `watch` are in scope). The mask lives here at full image resolution; the
// server sends a case once (image, probability and entropy maps, start mask) and gets the
// mask back as row-major runs after every edit. Thresholds, overlays, the heat map and every
// tool are computed here, so nothing waits for the server while one paints.
//
// Mask model: override[i] is 0 (follow the model: probability > mask threshold), 1 (forced
// foreground) or 2 (forced background). Brush, eraser and tools write overrides, so moving the
// threshold keeps every edit; undo/redo store the overrides a step changed, or the mask threshold
// before and after a move of its slider.
//
// Volumes: the editor holds one display slice at a time (the same arrays as an image) and a cache
// of decoded neighbouring slices. Changing slice (slider, wheel, Up/Down, PageUp/PageDown, a click on
// the uncertainty strip) shows a cached slice at once and asks the server (`server.volume_slices`,
// one request at a time, without Gradio's queue) for what is missing, sending the edits of the
// slices left behind; the server keeps them in the annotator's volume draft and confirms them.
// A slice counts as reviewed when it was edited or stayed on screen REVIEW_DWELL_MS (handlers.py
// says precisely what that means for the saved volume). Undo works within the slice on screen.
// The other two anatomical planes, the crosshair and painting in them: volume_planes.js.

const $ = (selector) => element.querySelector(selector);
const FOLLOW = 0, FOREGROUND = 1, BACKGROUND = 2;
const MAX_UNDO = 200;
const MASK_RGB = [255, 196, 0], BAND_RGB = [0, 200, 255];
const CANVAS_MIN = 240, CANVAS_MAX = 1100;   // CSS px
const THRESHOLD_STEP_MS = 600;   // slider moves closer together than this are one undo step
const NAME_NEEDED = "Type your name in Annotator to edit: drafts and saved versions are kept under your name.";
const REVIEW_DWELL_MS = 700;     // on screen this long, a slice counts as reviewed (handlers.REVIEW_DWELL_MS)
const WHEEL_STEP = 50;           // wheel delta (px) per slice: one mouse notch, or a touchpad's small steps added up
const CACHE_REACH = 4;           // decoded slices kept on either side of the slice on screen
const TOOLS = {
    brush: "Brush: paint foreground",
    erase: "Eraser: paint background",
    local: "Threshold brush: inside the brush, mask = probability > t",
    component: "Component: click deletes a connected piece, Shift+click keeps only it",
    hand: "Hand: drag to pan",
    crosshair: "Crosshair: click a voxel, the other planes go there (Alt+click does it with any tool)",
};

const S = {
    loaded: false, W: 0, H: 0, meta: {}, prob: null, ent: null, over: null, mask: null, band: null,
    imageCanvas: null, imagePixels: null, overlayCanvas: null, overlayImage: null, heatCanvas: null, heatImage: null,
    threshold: 0.5, uncertainty: 0.35, opacity: 0.4, localThreshold: 0.5, size: 9, growBy: 2,
    tool: "brush", showOverlay: true, undo: [], redo: [], revision: 0, savedRevision: 0,
    view: { scale: 1, ox: 0, oy: 0 }, stroke: null, panning: null, cursor: null, spaceDown: false,
    syncTimer: null, magma: null, lastTimings: {}, vol: null,
    canvas: null, aspect: 1,   // the canvas being edited (a volume's active plane) and its pixels' height / width
};
let DECODED = 0;   // decoded slices, numbered: the plane panes redraw only when what they show changed

function editorCanvas() { return S.canvas || $(".mse-canvas"); }

// ---------------------------------------------------------------- decoding what the server sends

function bytesOf(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
}

function float16Table() {
    // Every float16 bit pattern as a number: entropy maps arrive as float16 and stay exact.
    const table = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) {
        const sign = bits & 0x8000 ? -1 : 1, exponent = (bits >> 10) & 0x1f, fraction = bits & 0x3ff;
        let value;
        if (exponent === 0) value = sign * Math.pow(2, -14) * (fraction / 1024);
        else if (exponent === 31) value = fraction ? NaN : sign * Infinity;
        else value = sign * Math.pow(2, exponent - 15) * (1 + fraction / 1024);
        table[bits] = value;
    }
    return table;
}
let F16 = null;

function decodeRuns(runs, length) {
    // Row-major runs that start with background: "bg,fg,bg,..." (or a list).
    if (typeof runs === "string") runs = runs.split(",").map(Number);
    const mask = new Uint8Array(length);
    let at = 0, value = 0;
    for (const run of runs) {
        if (value) mask.fill(1, at, Math.min(length, at + run));
        at += run;
        value ^= 1;
    }
    return mask;
}

function encodeRuns(mask) {
    const runs = [];
    let value = 0, count = 0;
    for (let i = 0; i < mask.length; i++) {
        if (mask[i] === value) { count++; continue; }
        runs.push(count);
        value ^= 1;
        count = 1;
    }
    runs.push(count);
    return runs;
}

function loadImage(dataUrl) {
    return new Promise((resolve, reject) => {
        const picture = new Image();
        picture.onload = () => resolve(picture);
        picture.onerror = () => reject(new Error("the image could not be decoded"));
        picture.src = dataUrl;
    });
}

// ---------------------------------------------------------------- the mask and what is drawn

function modelMask(i, threshold32) { return S.prob[i] > threshold32 ? 1 : 0; }

function recomputeMask() {
    // Float32 comparison, as numpy does with a float32 map and a Python float.
    const t = Math.fround(S.threshold), prob = S.prob, over = S.over, mask = S.mask;
    for (let i = 0; i < mask.length; i++) {
        const o = over[i];
        mask[i] = o === FOREGROUND ? 1 : o === BACKGROUND ? 0 : (prob[i] > t ? 1 : 0);
    }
}

function recomputeBand() {
    const u = Math.fround(S.uncertainty), ent = S.ent, band = S.band;
    for (let i = 0; i < band.length; i++) band[i] = ent[i] >= u ? 1 : 0;
}

function renderOverlay(x0 = 0, y0 = 0, x1 = S.W - 1, y1 = S.H - 1) {
    // Mask fill at the chosen opacity, its outline opaque, the uncertain band's outline in cyan.
    const W = S.W, H = S.H, mask = S.mask, band = S.band, data = S.overlayImage.data;
    x0 = Math.max(0, x0); y0 = Math.max(0, y0); x1 = Math.min(W - 1, x1); y1 = Math.min(H - 1, y1);
    const fillAlpha = Math.round(255 * S.opacity), show = S.showOverlay;
    // Enlarged (2 screen px or more per image px) the outlines are drawn as lines between pixels
    // in draw(); smaller, they are pixels of this layer.
    const pixelOutlines = !S.vectorOutlines;
    S.overlayVersion = (S.overlayVersion || 0) + 1;
    for (let y = y0; y <= y1; y++) {
        let i = y * W + x0, p = i * 4;
        for (let x = x0; x <= x1; x++, i++, p += 4) {
            let r = 0, g = 0, b = 0, a = 0;
            if (show) {
                const m = mask[i];
                const edge = m && ((x > 0 && !mask[i - 1]) || (x < W - 1 && !mask[i + 1]) ||
                                   (y > 0 && !mask[i - W]) || (y < H - 1 && !mask[i + W]));
                const bandEdge = band[i] && ((x > 0 && !band[i - 1]) || (x < W - 1 && !band[i + 1]) ||
                                             (y > 0 && !band[i - W]) || (y < H - 1 && !band[i + W]));
                if (bandEdge && pixelOutlines) { r = BAND_RGB[0]; g = BAND_RGB[1]; b = BAND_RGB[2]; a = 255; }
                else if (edge && pixelOutlines) { r = MASK_RGB[0]; g = MASK_RGB[1]; b = MASK_RGB[2]; a = 255; }
                else if (m) { r = MASK_RGB[0]; g = MASK_RGB[1]; b = MASK_RGB[2]; a = fillAlpha; }
            }
            data[p] = r; data[p + 1] = g; data[p + 2] = b; data[p + 3] = a;
        }
    }
    S.overlayCanvas.getContext("2d").putImageData(S.overlayImage, 0, 0, x0, y0, x1 - x0 + 1, y1 - y0 + 1);
}

function renderHeat() {
    // Entropy on a fixed 0..ln 2 scale; pixels under the uncertainty threshold show the dimmed image.
    const ent = S.ent, band = S.band, data = S.heatImage.data, image = S.imagePixels, lut = S.magma;
    const top = S.meta.max_entropy;
    for (let i = 0, p = 0; i < ent.length; i++, p += 4) {
        if (band[i]) {
            const k = Math.max(0, Math.min(255, Math.round(ent[i] / top * 255))) * 3;
            data[p] = lut[k]; data[p + 1] = lut[k + 1]; data[p + 2] = lut[k + 2];
        } else {
            data[p] = image[p] * 0.35; data[p + 1] = image[p + 1] * 0.35; data[p + 2] = image[p + 2] * 0.35;
        }
        data[p + 3] = 255;
    }
    S.heatCanvas.getContext("2d").putImageData(S.heatImage, 0, 0);
    const marker = $(".mse-bar-marker");
    marker.style.bottom = `${Math.min(100, 100 * S.uncertainty / top)}%`;
}

function fitCanvas(canvas) {
    const box = canvas.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(box.width * ratio)), height = Math.max(1, Math.round(box.height * ratio));
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    return { width: box.width, height: box.height, ratio };
}

function drawView(canvas, layers, view, aspect = 1) {
    // aspect: the height of a pixel over its width (a coronal slice of 2.5 mm slices of 0.7 mm pixels).
    const { width, height, ratio } = fitCanvas(canvas);
    const context = canvas.getContext("2d");
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.setTransform(ratio * view.scale, 0, 0, ratio * view.scale * aspect, ratio * view.ox, ratio * view.oy);
    // Nearest neighbour when enlarging, so a 64 x 64 slice shows its pixels; smooth when shrinking.
    context.imageSmoothingEnabled = view.scale < 1;
    for (const layer of layers) context.drawImage(layer, 0, 0);
    return { context, width, height, ratio };
}

function outlinePath(mask, x0, y0, x1, y1) {
    // Pixel edges between inside and outside, in image coordinates, for the visible pixels only.
    const path = new Path2D(), W = S.W, H = S.H;
    for (let y = y0; y <= y1; y++) {
        for (let x = x0; x <= x1; x++) {
            const i = y * W + x;
            if (!mask[i]) continue;
            if (y === 0 || !mask[i - W]) { path.moveTo(x, y); path.lineTo(x + 1, y); }
            if (y === H - 1 || !mask[i + W]) { path.moveTo(x, y + 1); path.lineTo(x + 1, y + 1); }
            if (x === 0 || !mask[i - 1]) { path.moveTo(x, y); path.lineTo(x, y + 1); }
            if (x === W - 1 || !mask[i + 1]) { path.moveTo(x + 1, y); path.lineTo(x + 1, y + 1); }
        }
    }
    return path;
}

function drawVectorOutlines(context, ratio, width, height) {
    const v = S.view, sy = v.scale * S.aspect;
    const x0 = Math.max(0, Math.floor(-v.ox / v.scale)), y0 = Math.max(0, Math.floor(-v.oy / sy));
    const x1 = Math.min(S.W - 1, Math.ceil((width - v.ox) / v.scale)), y1 = Math.min(S.H - 1, Math.ceil((height - v.oy) / sy));
    const key = `${S.overlayVersion}:${x0}:${y0}:${x1}:${y1}`;
    if (S.outlineKey !== key) {
        S.outlineKey = key;
        S.outlines = { mask: outlinePath(S.mask, x0, y0, x1, y1), band: outlinePath(S.band, x0, y0, x1, y1) };
    }
    context.setTransform(ratio * v.scale, 0, 0, ratio * sy, ratio * v.ox, ratio * v.oy);
    context.lineWidth = 2 / v.scale;
    context.strokeStyle = `rgb(${MASK_RGB.join(",")})`;
    context.stroke(S.outlines.mask);
    context.strokeStyle = `rgb(${BAND_RGB.join(",")})`;
    context.stroke(S.outlines.band);
}

function draw() {
    if (!S.loaded) return;
    const started = performance.now();
    const editor = editorCanvas();
    const vector = S.view.scale >= 2;
    if (vector !== S.vectorOutlines) { S.vectorOutlines = vector; renderOverlay(); }
    const { context, ratio, width, height } = drawView(editor, [S.imageCanvas, S.overlayCanvas], S.view, S.aspect);
    if (vector && S.showOverlay) drawVectorOutlines(context, ratio, width, height);
    if (S.cursor && S.tool !== "hand" && S.tool !== "component" && S.tool !== "crosshair") {
        // The brush outline, in image pixels: what the brush will change.
        context.setTransform(ratio, 0, 0, ratio, 0, 0);
        const radius = S.size / 2 * S.view.scale;
        const cx = S.view.ox + (S.cursor.x + 0.5) * S.view.scale, cy = S.view.oy + (S.cursor.y + 0.5) * S.view.scale * S.aspect;
        context.beginPath();
        context.ellipse(cx, cy, Math.max(1, radius), Math.max(1, radius * S.aspect), 0, 0, 2 * Math.PI);
        context.strokeStyle = S.tool === "erase" ? "#ff4fd8" : S.tool === "local" ? "#7df9ff" : "#00e000";
        context.lineWidth = 1.5;
        context.stroke();
    }
    const heat = $(".mse-heat");
    const heatBox = heat.getBoundingClientRect(), editorBox = editor.getBoundingClientRect();
    const k = editorBox.width > 0 ? heatBox.width / editorBox.width : 1;
    drawView(heat, [S.heatCanvas], { scale: S.view.scale * k, ox: S.view.ox * k, oy: S.view.oy * k }, S.aspect);
    if (hasPlanes()) {
        drawCrosshair(context, ratio, S.vol.active, S.view, S.aspect, S.W, S.H);
        drawPanes();
    }
    S.lastTimings.draw_ms = performance.now() - started;
}

function fitHeight() {
    // The canvas reaches down to the bottom of the screen, less room for the two status lines under
    // it, so the case's buttons, the whole image and the last action's status show without scrolling.
    const canvas = editorCanvas();
    if (!S.loaded || S.stroke || !canvas.offsetParent) return;
    const top = canvas.getBoundingClientRect().top + window.scrollY;
    const below = $(".mse-message").offsetHeight + $(".mse-state").offsetHeight + 16;
    // In a frame that grows with its page (Hugging Face Spaces) innerHeight is the page's height,
    // not the screen's: the screen bounds it instead.
    const screenHeight = window.self === window.top ? window.innerHeight
        : Math.min(window.innerHeight, window.screen.availHeight - 120);
    const height = Math.round(Math.min(CANVAS_MAX, Math.max(CANVAS_MIN, screenHeight - top - below)));
    if (Math.abs(canvas.offsetHeight - height) >= 2) canvas.style.height = `${height}px`;
    if (hasPlanes()) fitPaneHeights(height);
}

function fitView() {
    const box = editorCanvas().getBoundingClientRect();
    const scale = Math.min(box.width / S.W, box.height / (S.H * S.aspect));
    S.view = { scale, ox: (box.width - S.W * scale) / 2, oy: (box.height - S.H * scale * S.aspect) / 2 };
    S.fitted = true;
}

// ---------------------------------------------------------------- edits, undo, redo

function counts() {
    // Once per revision: the value sent and the status line both need them after every edit.
    const key = `${S.meta.session}:${S.vol ? `${S.vol.active || ""}${activeTrack().shown}` : ""}:${S.revision}:${S.threshold}:${S.W}`;
    if (S.countsKey === key) return S.counted;
    const t = Math.fround(S.threshold);
    let area = 0, added = 0, erased = 0;
    for (let i = 0; i < S.mask.length; i++) {
        const m = S.mask[i], p = S.prob[i] > t ? 1 : 0;
        area += m;
        if (m && !p) added++;
        else if (!m && p) erased++;
    }
    S.countsKey = key;
    S.counted = { area, added, erased };
    return S.counted;
}

function pushStep(step) {
    S.undo.push(step);
    if (S.undo.length > MAX_UNDO) S.undo.shift();
    S.redo = [];
}

function setThreshold(value) {
    S.threshold = value;
    $(".mse-threshold").value = value;
    $(".mse-threshold-value").textContent = Number(value).toFixed(2);
    recomputeMask();
    renderOverlay();
}

function commitThreshold() {
    // A move of the mask threshold slider (its input events until it is let go, or a pause) is one
    // undoable step, so that undo after a move puts the threshold back instead of undoing a stroke.
    clearTimeout(S.thresholdTimer);
    const step = S.thresholdStep;
    S.thresholdStep = null;
    if (!step || step.before === S.threshold) return;
    step.after = S.threshold;
    pushStep(step);
    status();
}

function changeOverrides(indices, values) {
    // One undoable step: indices (Int32Array) get the new override values.
    commitThreshold();
    const before = new Uint8Array(indices.length);
    let changed = 0;
    for (let k = 0; k < indices.length; k++) {
        before[k] = S.over[indices[k]];
        if (before[k] !== values[k]) changed++;
    }
    if (!changed) return false;
    applyOverrides(indices, values);
    pushStep({ indices, before, after: values });
    return true;
}

function applyOverrides(indices, values) {
    const t = Math.fround(S.threshold);
    let x0 = S.W, y0 = S.H, x1 = -1, y1 = -1;
    for (let k = 0; k < indices.length; k++) {
        const i = indices[k], o = values[k];
        S.over[i] = o;
        S.mask[i] = o === FOREGROUND ? 1 : o === BACKGROUND ? 0 : modelMask(i, t);
        const x = i % S.W, y = (i - x) / S.W;
        if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (x1 >= 0) renderOverlay(x0 - 1, y0 - 1, x1 + 1, y1 + 1);
}

function setMask(next, label) {
    // A tool's result as one step: pixels whose mask changes are forced to their new value.
    const indices = [], values = [];
    for (let i = 0; i < next.length; i++) {
        if (next[i] !== S.mask[i]) { indices.push(i); values.push(next[i] ? FOREGROUND : BACKGROUND); }
    }
    if (!indices.length) { note(`${label}: nothing to change.`); return false; }
    changeOverrides(Int32Array.from(indices), Uint8Array.from(values));
    edited(`${label}: ${indices.length.toLocaleString()} px changed.`);
    return true;
}

function undo() {
    commitThreshold();
    // A volume: the strokes on the slice on screen first, then the server's steps (volume_tools.js).
    if (!S.undo.length && S.vol && serverHasUndo()) { S.redo = []; volumeTool("undo"); return; }
    const step = S.undo.pop();
    if (!step) { note("Nothing to undo."); return; }
    S.redo.push(step);
    if (step.kind === "threshold") {
        setThreshold(step.before);
        edited(`Undone: mask threshold back to ${step.before.toFixed(2)}.`);
        return;
    }
    applyOverrides(step.indices, step.before);
    edited("Undone.");
}

function redo() {
    commitThreshold();
    if (!S.redo.length && S.vol && S.vol.serverRedo) { volumeTool("redo"); return; }
    const step = S.redo.pop();
    if (!step) { note("Nothing to redo."); return; }
    S.undo.push(step);
    if (step.kind === "threshold") {
        setThreshold(step.after);
        edited(`Redone: mask threshold ${step.after.toFixed(2)}.`);
        return;
    }
    applyOverrides(step.indices, step.after);
    edited("Redone.");
}

// ---------------------------------------------------------------- brushes

function brushOffsets(size) {
    // Pixels whose centre lies within size/2 of the centre pixel's centre.
    const radius = size / 2, reach = Math.floor(radius), offsets = [];
    for (let dy = -reach; dy <= reach; dy++)
        for (let dx = -reach; dx <= reach; dx++)
            if (dx * dx + dy * dy <= radius * radius) offsets.push([dx, dy]);
    return offsets;
}

function stamp(x, y) {
    const stroke = S.stroke, W = S.W, H = S.H, t = Math.fround(S.localThreshold);
    for (const [dx, dy] of stroke.offsets) {
        const px = x + dx, py = y + dy;
        if (px < 0 || py < 0 || px >= W || py >= H) continue;
        const i = py * W + px;
        if (stroke.touched.has(i)) continue;
        let value = FOREGROUND;
        if (stroke.tool === "erase") value = BACKGROUND;
        else if (stroke.tool === "local") value = S.prob[i] > t ? FOREGROUND : BACKGROUND;
        stroke.touched.set(i, S.over[i]);
        S.over[i] = value;
        S.mask[i] = value === FOREGROUND ? 1 : 0;
    }
    const reach = Math.ceil(S.size / 2) + 1;
    renderOverlay(x - reach, y - reach, x + reach, y + reach);
}

function strokeTo(x, y) {
    const last = S.stroke.last;
    const steps = last ? Math.max(Math.abs(x - last.x), Math.abs(y - last.y)) : 0;
    for (let s = 1; s <= steps; s++) {
        stamp(Math.round(last.x + (x - last.x) * s / steps), Math.round(last.y + (y - last.y) * s / steps));
    }
    if (!steps) stamp(x, y);
    S.stroke.last = { x, y };
}

function endStroke() {
    const stroke = S.stroke;
    S.stroke = null;
    if (!stroke || !stroke.touched.size) return;
    const indices = Int32Array.from(stroke.touched.keys());
    const before = Uint8Array.from(stroke.touched.values());
    const after = new Uint8Array(indices.length);
    for (let k = 0; k < indices.length; k++) after[k] = S.over[indices[k]];
    commitThreshold();
    pushStep({ indices, before, after });
    edited(`${TOOLS[stroke.tool].split(":")[0]}: ${indices.length.toLocaleString()} px painted.`);
}

// ---------------------------------------------------------------- uncertainty tools

function bandTo(foreground) {
    const next = Uint8Array.from(S.mask);
    for (let i = 0; i < next.length; i++) if (S.band[i]) next[i] = foreground ? 1 : 0;
    setMask(next, foreground ? "Band → foreground" : "Band → background");
}

function floodFrom(starts, inside, connectivity8) {
    // Pixels reachable from `starts` through pixels where inside(i) is true.
    const W = S.W, H = S.H, seen = new Uint8Array(W * H), queue = new Int32Array(W * H);
    let head = 0, tail = 0;
    for (const i of starts) if (!seen[i] && inside(i)) { seen[i] = 1; queue[tail++] = i; }
    while (head < tail) {
        const i = queue[head++], x = i % W, y = (i - x) / W;
        for (let dy = -1; dy <= 1; dy++) {
            for (let dx = -1; dx <= 1; dx++) {
                if ((!dx && !dy) || (!connectivity8 && dx && dy)) continue;
                const nx = x + dx, ny = y + dy;
                if (nx < 0 || ny < 0 || nx >= W || ny >= H) continue;
                const j = ny * W + nx;
                if (!seen[j] && inside(j)) { seen[j] = 1; queue[tail++] = j; }
            }
        }
    }
    return seen;
}

function component(x, y, keepOnly) {
    const i = y * S.W + x;
    if (!S.mask[i]) { note("Click inside the mask to pick a connected piece."); return; }
    const piece = floodFrom([i], (j) => S.mask[j] === 1, true);
    const next = new Uint8Array(S.mask.length);
    for (let j = 0; j < next.length; j++) next[j] = keepOnly ? piece[j] : (S.mask[j] && !piece[j] ? 1 : 0);
    setMask(next, keepOnly ? "Keep only this piece" : "Delete this piece");
}

function fillHoles() {
    // Holes: background not connected (4-neighbours) to the image border.
    const W = S.W, H = S.H, border = [];
    for (let x = 0; x < W; x++) { border.push(x, (H - 1) * W + x); }
    for (let y = 0; y < H; y++) { border.push(y * W, y * W + W - 1); }
    const outside = floodFrom(border, (j) => S.mask[j] === 0, false);
    const next = new Uint8Array(S.mask.length);
    for (let j = 0; j < next.length; j++) next[j] = outside[j] ? 0 : 1;
    setMask(next, "Fill holes");
}

function squaredDistance(feature) {
    // Exact squared Euclidean distance to the nearest feature pixel (separable, two 1-D passes).
    const W = S.W, H = S.H, INF = 1e20, out = new Float64Array(W * H);
    const n = Math.max(W, H), f = new Float64Array(n), d = new Float64Array(n), v = new Int32Array(n), z = new Float64Array(n + 1);
    const pass = (count) => {
        let k = 0;
        v[0] = 0; z[0] = -INF; z[1] = INF;
        for (let q = 1; q < count; q++) {
            let s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2 * q - 2 * v[k]);
            while (s <= z[k]) { k--; s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2 * q - 2 * v[k]); }
            k++; v[k] = q; z[k] = s; z[k + 1] = INF;
        }
        k = 0;
        for (let q = 0; q < count; q++) {
            while (z[k + 1] < q) k++;
            d[q] = (q - v[k]) * (q - v[k]) + f[v[k]];
        }
    };
    for (let x = 0; x < W; x++) {
        for (let y = 0; y < H; y++) f[y] = feature[y * W + x] ? 0 : INF;
        pass(H);
        for (let y = 0; y < H; y++) out[y * W + x] = d[y];
    }
    for (let y = 0; y < H; y++) {
        for (let x = 0; x < W; x++) f[x] = out[y * W + x];
        pass(W);
        for (let x = 0; x < W; x++) out[y * W + x] = d[x];
    }
    return out;
}

function growShrink(grow) {
    const by = Math.round(Number($(".mse-grow").value));
    if (!(by >= 1 && by <= 256)) { note("Grow/shrink takes a whole number of pixels from 1 to 256."); return; }
    const limit = by * by, next = new Uint8Array(S.mask.length);
    if (grow) {
        const distance = squaredDistance(S.mask);
        for (let i = 0; i < next.length; i++) next[i] = distance[i] <= limit ? 1 : 0;
    } else {
        const background = new Uint8Array(S.mask.length);
        let any = false;
        for (let i = 0; i < background.length; i++) { background[i] = S.mask[i] ? 0 : 1; any = any || !S.mask[i]; }
        if (!any) { note("Shrink: the mask covers the whole image; there is no edge to shrink from."); return; }
        const distance = squaredDistance(background);
        for (let i = 0; i < next.length; i++) next[i] = S.mask[i] && distance[i] > limit ? 1 : 0;
    }
    setMask(next, `${grow ? "Grow" : "Shrink"} by ${by} px`);
}

// ---------------------------------------------------------------- talking to the server

function currentValue() {
    const c = counts();
    return {
        kind: "edit", session: S.meta.session, case_id: S.meta.case_id, prediction_id: S.meta.prediction_id,
        base_version: S.meta.base_version, threshold: S.threshold, uncertainty_threshold: S.uncertainty,
        width: S.W, height: S.H, revision: S.revision, saved_revision: S.savedRevision,
        dirty: S.revision !== S.savedRevision, edited: c.added + c.erased > 0, area_px: c.area,
        pixels_added: c.added, pixels_erased: c.erased, steps: S.undo.length, runs: encodeRuns(S.mask).join(","),
        ...(S.vol ? volumeValue() : {}),
    };
}

function publish(delay = 350) {
    // The value is always current (a Save pressed right after a stroke sends it); the change
    // event that keeps the draft and the numbers is debounced.
    const started = performance.now();
    props.value = currentValue();
    S.lastTimings.encode_ms = performance.now() - started;
    clearTimeout(S.syncTimer);
    S.syncPending = true;
    S.syncTimer = setTimeout(flush, delay);
}

function flush() {
    clearTimeout(S.syncTimer);
    S.syncPending = false;
    S.lastTimings.sent_revision = S.revision;
    S.lastTimings.sent_at = performance.now();
    trigger("input");
}

function edited(message) {
    S.revision++;
    // Strokes and tools (not the threshold slider): what makes a volume slice "drawn".
    S.paintRevision = (S.paintRevision || 0) + 1;
    if (hasPlanes()) planesAfterEdit();
    draw();
    publish();
    status(message);
}

function note(message) { status(message); }

function status(message) {
    const c = S.loaded ? counts() : null;
    const parts = [];
    if (S.loaded) {
        parts.push(`Case #${S.meta.case_id}`);
        if (S.vol) parts.push(planeActive() ? `${S.vol.active} slice ${S.vol.views[S.vol.active].index + 1} / ${S.vol.views[S.vol.active].depth}`
                                            : `slice ${S.vol.index + 1} / ${S.vol.depth}`);
        parts.push(`${c.area.toLocaleString()} px in the ${S.vol ? "slice's " : ""}mask (+${c.added.toLocaleString()} / −${c.erased.toLocaleString()} vs. the model)`);
        parts.push(`${S.undo.length} step(s)`);
        if (S.vol) parts.push(`${S.vol.reviewed.size} of ${S.vol.depth} slices reviewed`);
        parts.push(S.revision !== S.savedRevision ? "unsaved edits (kept as a draft)" : "no unsaved edits");
    }
    $(".mse-state").textContent = parts.join(" · ");
    if (message !== undefined) { $(".mse-message").textContent = message; $(".mse-message").title = message; }
    updateLock();
    updateHint();
    element.dataset.revision = String(S.revision);
    element.dataset.dirty = String(S.revision !== S.savedRevision);
}

// ---------------------------------------------------------------- a name before the first edit

function nameBox() { return document.querySelector("#annotator textarea, #annotator input"); }

function needsName() {
    // Drafts and versions are kept per annotator: without a name an edit could not be kept. With
    // logins the box is not shown and the login is the name.
    const box = nameBox();
    return Boolean(box && box.offsetParent !== null && !box.value.trim());
}

function updateLock() {
    const locked = S.loaded && needsName();
    $(".mse-lock").hidden = !locked;
    element.dataset.locked = String(locked);
    return locked;
}

function editable() {
    // False (and the lock says why) while no name is typed; viewing, zoom and pan stay free.
    const track = S.loaded && S.vol ? (planeActive() ? S.vol.views[S.vol.active] : S.vol) : null;
    if (track && track.left) {
        // The slice on screen was left and the next one is on its way: an edit would land on the wrong slice.
        note(`Slice ${(track.target ?? 0) + 1} is loading…`);
        return false;
    }
    if (!S.loaded || !updateLock()) return S.loaded;
    note(NAME_NEEDED);
    const lock = $(".mse-lock");
    lock.classList.remove("mse-flash");
    void lock.offsetWidth;
    lock.classList.add("mse-flash");
    return false;
}

function goToName() {
    const box = nameBox();
    if (!box) return;
    box.scrollIntoView({ block: "center" });
    box.focus();
}

function updateHint() {
    // A model that found nothing: say so on the canvas, and what to do, until something is drawn.
    const hint = $(".mse-hint");
    if (!S.loaded) { hint.hidden = true; return; }
    const c = counts(), modelArea = c.area - c.added + c.erased;
    const show = modelArea === 0 && c.area === 0;
    hint.hidden = !show;
    element.dataset.nothingFound = String(modelArea === 0);
    if (!show) return;
    const t = Number(S.threshold).toFixed(2), top = S.maxProbability.toFixed(2);
    const lower = S.maxProbability >= 0.05 ? " or lower the mask threshold," : "";
    hint.textContent = `The model found nothing for this prompt: no pixel is above the mask threshold ${t} ` +
        `(the highest probability is ${top}). Draw the structure with the brush (B)${lower} and save: ` +
        "corrections teach the model when it is retrained in the Model tab.";
}

// A volume's maps are kept 8-bit by the store and sent so (payload.volume_maps_fields): the step
// tables give exactly the float32 values numpy's dequantise gives (a float32 product, rounded once).
const STEP_TABLES = {};
function stepTable(name) {
    if (!STEP_TABLES[name]) {
        const step = Math.fround((name === "probability" ? 1 : Math.LN2) / 255), table = new Float32Array(256);
        for (let k = 0; k < 256; k++) table[k] = Math.fround(k * step);
        STEP_TABLES[name] = table;
    }
    return STEP_TABLES[name];
}

function decodeMaps(value, length) {
    let prob, ent;
    if (value.probability_u8 !== undefined) {
        const steps = bytesOf(value.probability_u8), table = stepTable("probability");
        if (steps.length !== length) throw new Error("the maps sent do not match the image size");
        prob = new Float32Array(length);
        for (let i = 0; i < length; i++) prob[i] = table[steps[i]];
        const at = new Int32Array(bytesOf(value.probability_fix_at).buffer);
        const exact = new Float32Array(bytesOf(value.probability_fix).buffer);
        for (let k = 0; k < at.length; k++) prob[at[k]] = exact[k];
    } else {
        const bytes = bytesOf(value.probability);
        if (bytes.length !== length * 4) throw new Error("the maps sent do not match the image size");
        prob = new Float32Array(bytes.buffer);
    }
    ent = new Float32Array(length);
    if (value.entropy_u8 !== undefined) {
        const steps = bytesOf(value.entropy_u8), table = stepTable("entropy");
        if (steps.length !== length) throw new Error("the maps sent do not match the image size");
        for (let i = 0; i < length; i++) ent[i] = table[steps[i]];
    } else {
        const bytes = bytesOf(value.entropy);
        if (bytes.length !== length * 2) throw new Error("the maps sent do not match the image size");
        const bits = new Uint16Array(bytes.buffer);
        for (let i = 0; i < length; i++) ent[i] = F16[bits[i]];
    }
    return { prob, ent };
}

async function decodeSlice(value) {
    // A slice (an image case's picture, a volume's slice) ready to show: the picture on a canvas and
    // its pixels, the maps as arrays, and the mask to start from.
    if (!F16) F16 = float16Table();
    const W = value.width, H = value.height, length = W * H;
    const picture = await loadImage(value.image);
    const imageCanvas = document.createElement("canvas");
    imageCanvas.width = W; imageCanvas.height = H;
    const imageContext = imageCanvas.getContext("2d");
    imageContext.drawImage(picture, 0, 0, W, H);
    const { prob, ent } = decodeMaps(value, length);
    let highest = 0;
    for (let i = 0; i < length; i++) if (prob[i] > highest) highest = prob[i];
    return {
        index: value.volume ? value.volume.index : (value.index ?? null), W, H, imageCanvas,
        imagePixels: imageContext.getImageData(0, 0, W, H).data, prob, ent, maxProbability: highest,
        startRuns: value.start_runs, followsModel: Boolean(value.follows_model), window: value.window || null,
        id: ++DECODED, plane: value.plane || null,
    };
}

function applyStart(entry) {
    // The start mask (a draft, the latest saved version or the model's): where it differs from the
    // model at the threshold, it is an edit. A volume slice nobody reviewed follows the model at
    // whatever threshold is in use now.
    const length = S.W * S.H, t = Math.fround(S.threshold);
    S.over = new Uint8Array(length);
    if (entry.followsModel) return;
    const start = decodeRuns(entry.startRuns, length);
    for (let i = 0; i < length; i++) {
        const model = S.prob[i] > t ? 1 : 0;
        S.over[i] = start[i] === model ? FOLLOW : (start[i] ? FOREGROUND : BACKGROUND);
    }
}

async function openCase(value) {
    const started = performance.now();
    const entry = await decodeSlice(value);
    const W = entry.W, H = entry.H, length = W * H;
    if (S.vol) clearTimeout(S.vol.dwellTimer);
    Object.assign(S, {
        W, H, meta: value, prob: entry.prob, ent: entry.ent,
        mask: new Uint8Array(length), band: new Uint8Array(length),
        imageCanvas: entry.imageCanvas, imagePixels: entry.imagePixels,
        threshold: value.threshold, uncertainty: value.uncertainty_threshold,
        opacity: value.opacity ?? S.opacity, undo: [], redo: [], revision: 0, savedRevision: 0,
        magma: Uint8Array.from(value.colormap), thresholdStep: null, maxProbability: entry.maxProbability, vol: null,
    });
    clearTimeout(S.thresholdTimer);
    S.overlayCanvas = document.createElement("canvas");
    S.overlayCanvas.width = W; S.overlayCanvas.height = H;
    S.overlayImage = new ImageData(W, H);
    S.heatCanvas = document.createElement("canvas");
    S.heatCanvas.width = W; S.heatCanvas.height = H;
    S.heatImage = new ImageData(W, H);
    const stops = [];
    for (let k = 0; k <= 10; k++) {
        const j = Math.round(k * 25.5) * 3;
        stops.push(`rgb(${S.magma[j]}, ${S.magma[j + 1]}, ${S.magma[j + 2]}) ${k * 10}%`);
    }
    $(".mse-bar-scale").style.background = `linear-gradient(to top, ${stops.join(", ")})`;
    $(".mse-bar-top").textContent = value.max_entropy.toFixed(2);
    $(".mse-bar-mid").textContent = (value.max_entropy / 2).toFixed(2);
    $(".mse-uncertainty").max = String(Math.floor(value.max_entropy * 100) / 100);
    applyStart(entry);
    if (value.start === "draft") { S.revision = 1; S.savedRevision = 0; }
    recomputeMask();
    recomputeBand();
    S.loaded = true;
    resetPanes();
    if (value.volume) openVolume(value, entry);
    $(".mse-volume").hidden = !S.vol;
    $(".mse-volume-keys").hidden = !S.vol;
    if (!S.vol) closeVolumeTools();
    syncControls();
    $(".mse-empty").style.display = "none";
    $(".mse-body").style.display = "";
    $(".mse-title").textContent = value.title || "";
    $(".mse-title").title = value.title || "";
    fitHeight();
    fitView();
    renderOverlay();
    renderHeat();
    draw();
    if (S.vol) syncVolume();
    props.value = currentValue();
    S.lastTimings.open_ms = performance.now() - started;
    status(value.start_note || "");
    element.dataset.caseId = String(value.case_id);
    element.dataset.ready = "true";
}

function closeCase(message) {
    S.loaded = false;
    S.meta = {};
    if (S.vol) clearTimeout(S.vol.dwellTimer);
    S.vol = null;
    resetPanes();
    $(".mse-volume").hidden = true;
    closeVolumeTools();
    S.thresholdStep = null;
    clearTimeout(S.thresholdTimer);
    $(".mse-empty").style.display = "";
    $(".mse-body").style.display = "none";
    if (!S.emptyHtml) S.emptyHtml = $(".mse-empty").innerHTML;   // the page's first words: how to start
    if (message) $(".mse-empty").textContent = message;
    else $(".mse-empty").innerHTML = S.emptyHtml;
    element.dataset.caseId = "";
    element.dataset.ready = "false";
    props.value = null;
}

function received() {
    const value = props.value;
    if (!value || typeof value !== "object") return;
    if (value.kind === "case") {
        element.dataset.ready = "false";
        openCase(value).catch((error) => closeCase(`The case could not be shown: ${error.message}`));
    } else if (value.kind === "saved" && S.loaded && value.case_id === S.meta.case_id) {
        // A save went through: the editor stays as it is, now based on the saved version.
        S.meta.base_version = value.base_version;
        S.savedRevision = Math.max(S.savedRevision, value.revision);
        if (S.savedRevision > S.revision) S.savedRevision = S.revision;
        // Edits made while the save was on its way stay a draft, now based on the saved version.
        if (S.revision !== S.savedRevision) publish(); else props.value = currentValue();
        status(value.message || "Saved.");
    } else if (value.kind === "closed") {
        closeCase(value.message);
    } else if (value.kind === "edit" && S.loaded) {
        props.value = currentValue();
    }
}

// ---------------------------------------------------------------- volumes: one slice at a time

function openVolume(value, entry) {
    const block = value.volume;
    S.vol = {
        depth: block.depth, index: block.index, target: null, plane: block.plane, spacing: block.spacing,
        modality: block.modality, strip: block.strip, stripNats: block.strip_nats, windows: block.windows,
        window: block.window.slice(), reviewed: new Set(block.reviewed), edited: new Set(block.edited),
        cache: new Map([[block.index, entry]]), pending: new Map(), busy: false, again: false, left: false,
        shownAt: performance.now(), visitRevision: S.revision, visitPaint: S.paintRevision || 0, dwellTimer: null,
        wheel: 0, navStartedAt: null,
        timings: [],
    };
    entry.window = block.window.slice();
    setupPlanes(block, entry);
    setupVolumeTools(block);
    S.vol.dwellTimer = setTimeout(() => markReviewed(block.index), REVIEW_DWELL_MS);
    buildWindowButtons();
    const session = value.session;
    Promise.all((block.neighbours || []).map(decodeSlice)).then((entries) => {
        if (!S.vol || S.meta.session !== session) return;
        for (const neighbour of entries) S.vol.cache.set(neighbour.index, neighbour);
    }).catch(() => {});   // missing neighbours are asked for when they are needed
}

function volumeValue() {
    // What the server needs besides the slice on screen: which slice it is, the slices reviewed,
    // the edits of slices left behind that the server has not confirmed, the window.
    const vol = S.vol;
    return {
        volume: true, slice_index: vol.index, reviewed: [...vol.reviewed], pending: [...vol.pending.values()],
        window: vol.window.slice(), ...(hasPlanes() ? planeValue() : {}),
    };
}

function windowMatches(entry) {
    return !entry.window || (entry.window[0] === S.vol.window[0] && entry.window[1] === S.vol.window[1]);
}

function markReviewed(index) {
    // The slice stayed on screen long enough to count as reviewed: say so to the server (the
    // debounced event keeps it in the draft).
    const vol = S.vol;
    if (!vol || vol.left || vol.index !== index || vol.reviewed.has(index)) return;
    vol.reviewed.add(index);
    drawStrip();
    status();
    publish();
}

function leaveSlice() {
    // The slice on screen is being left: a reviewed slice (edited, or looked at long enough) becomes
    // an edit to send, and the cache keeps what it looks like now.
    const vol = S.vol;
    if (!vol || vol.left) return;
    if (S.stroke) endStroke();
    commitThreshold();
    clearTimeout(vol.dwellTimer);
    const index = vol.index, changed = S.revision !== vol.visitRevision;
    const painted = (S.paintRevision || 0) !== vol.visitPaint;
    if (changed) vol.edited.add(index);
    if (changed || performance.now() - vol.shownAt >= REVIEW_DWELL_MS) vol.reviewed.add(index);
    if (vol.reviewed.has(index)) {
        const runs = encodeRuns(S.mask).join(","), before = vol.pending.get(index);
        // drawn: painted on screen (a stroke or a tool; a threshold move alone is not drawing), so a
        // drawn slice on the server even if it ends as it began.
        vol.pending.set(index, { index, revision: S.revision, runs, drawn: painted || Boolean(before && before.drawn) });
        const entry = vol.cache.get(index);
        if (entry) { entry.startRuns = runs; entry.followsModel = false; entry.rev = (entry.rev || 0) + 1; }
    }
    vol.left = true;
}

function showSlice(entry) {
    // Put a decoded slice on screen, keeping the tool, the thresholds and the zoom.
    const vol = S.vol;
    leaveSlice();
    putOnScreen(entry);
    Object.assign(vol, { index: entry.index, target: null, left: false, shownAt: performance.now(),
                         visitRevision: S.revision, visitPaint: S.paintRevision || 0 });
    if (hasPlanes()) vol.views[vol.acquisition].shown = entry;
    vol.dwellTimer = setTimeout(() => markReviewed(entry.index), REVIEW_DWELL_MS);
    if (S.fitted) fitView();
    renderOverlay();
    renderHeat();
    draw();
    syncVolume();
    shownTimings();
    status(`Slice ${entry.index + 1} of ${vol.depth}.`);
    // The numbers follow (debounced), and the browser notes the slice so that a reload comes back to it.
    publish();
    element.dataset.slice = String(entry.index);
}

function goToSlice(target) {
    const vol = S.vol;
    if (!S.loaded || !vol) return;
    if (planeActive()) { goToPlaneSlice(target); return; }
    target = Math.max(0, Math.min(vol.depth - 1, Math.round(Number(target))));
    if (!Number.isFinite(target) || target === (vol.target ?? vol.index)) { syncVolume(); return; }
    vol.navStartedAt = performance.now();
    if (hasPlanes()) vol.point[0] = target;
    if (target === vol.index && vol.left) {
        // Back to the slice still held while another one was loading.
        showSlice(vol.cache.get(target) || { ...currentEntry(), index: target });
        syncSlices();
        return;
    }
    leaveSlice();
    const entry = vol.cache.get(target);
    if (entry && windowMatches(entry)) {
        showSlice(entry);
    } else {
        vol.target = target;
        syncVolume();
        note(`Loading slice ${target + 1}…`);
    }
    syncSlices();
}

function currentEntry() {
    return { W: S.W, H: S.H, prob: S.prob, ent: S.ent, imageCanvas: S.imageCanvas, imagePixels: S.imagePixels,
             maxProbability: S.maxProbability, startRuns: encodeRuns(S.mask).join(","), followsModel: false,
             window: S.vol.window.slice() };
}

function stepSlice(by) {
    if (S.vol) goToSlice(activeTrack().shown + by);
}

function slicesWanted() {
    // The slice to show (when it is not cached), then its neighbours: what the next request asks for.
    const vol = S.vol, centre = vol.target ?? vol.index, wanted = [];
    for (const index of [centre, centre + 1, centre - 1]) {
        if (index < 0 || index >= vol.depth) continue;
        const entry = vol.cache.get(index);
        if (!entry || !windowMatches(entry)) wanted.push(index);
    }
    return wanted;
}

async function syncSlices() {
    // One request at a time; what changes while it is on its way goes with the next one.
    const vol = S.vol;
    if (!vol) return;
    if (vol.busy) { vol.again = true; return; }
    vol.busy = true;
    try {
        do {
            vol.again = false;
            const wanted = slicesWanted();
            if (!wanted.length && !vol.pending.size) break;
            const request = { ...currentValue(), kind: "slice_request", wanted, annotator: nameText() };
            const sentAt = performance.now(), generation = vol.generation || 0;
            const answer = await server.volume_slices(request);
            if (S.vol !== vol) return;   // another case was opened meanwhile
            await applySliceAnswer(answer, sentAt, wanted, generation);
        } while (S.vol === vol && (vol.again || (vol.target !== null && slicesWanted().includes(vol.target))));
    } catch (error) {
        if (S.vol === vol) note(`The slice could not be loaded (${error.message || error}); change slice to try again.`);
    } finally {
        vol.busy = false;
    }
}

function takeAnswer(answer, what) {
    // The head every slice and plane answer shares: "error" (said to the annotator), false for
    // another case or page, else true once the slice edits it confirms as stored leave the pending list.
    const vol = S.vol;
    if (!answer || answer.kind === "error") {
        note(answer ? answer.message : `The server did not answer the ${what} request.`);
        return "error";
    }
    if (answer.case_id !== S.meta.case_id || answer.session !== S.meta.session) return false;
    for (const [index, revision] of answer.stored || []) {
        const item = vol.pending.get(index);
        if (item && item.revision <= revision) { vol.pending.delete(index); if (item.drawn) vol.serverUndo = true; }
    }
    return true;
}

async function applySliceAnswer(answer, sentAt, wanted, generation = 0) {
    const vol = S.vol;
    const taken = takeAnswer(answer, "slice");
    if (taken === "error") vol.again = false;
    if (taken !== true) return;
    takeProvenance(answer);
    const entries = await Promise.all((answer.slices || []).map(decodeSlice));
    if (S.vol !== vol) return;
    let shown = false;
    for (const entry of entries) {
        if (!windowMatches(entry) || entry.W !== (vol.width ?? S.W) || entry.H !== (vol.height ?? S.H)) continue;
        // Sent before an edit in another plane crossed it: asked for again.
        if (hasPlanes() && !freshFor(vol.acquisition, generation)) { vol.again = true; continue; }
        entry.generation = generation;
        if (entry.index === vol.index && !vol.left) {
            // The slice on screen in another window: only its picture changes, its edits stay.
            Object.assign(S, { imageCanvas: entry.imageCanvas, imagePixels: entry.imagePixels });
            renderHeat();
            draw();
            entry.startRuns = encodeRuns(S.mask).join(",");
            entry.followsModel = false;
        }
        vol.cache.set(entry.index, entry);
        if (vol.target === entry.index) { showSlice(entry); shown = true; }
    }
    vol.timings.push({ round_trip_ms: performance.now() - sentAt, slices: wanted.length, shown });
    if (vol.timings.length > 200) vol.timings.shift();
    pruneCache();
    drawStrip();
    if (hasPlanes()) drawPanes();
}

function pruneCache() {
    const vol = S.vol, centre = vol.target ?? vol.index;
    for (const index of [...vol.cache.keys()]) {
        if (Math.abs(index - centre) > CACHE_REACH && index !== vol.index &&
            !(hasPlanes() && index === vol.point[0])) vol.cache.delete(index);
    }
}

function nameText() {
    const box = nameBox();
    return box ? box.value.trim() : "";
}

function setWindow(center, width) {
    // Another window: the slices are drawn again by the server (the picture only; masks and edits stay).
    const vol = S.vol;
    if (!vol || (vol.window[0] === center && vol.window[1] === width)) return;
    vol.window = [center, width];
    syncVolume();
    props.value = currentValue();
    syncSlices();
    if (hasPlanes()) syncPlanes();
}

function buildWindowButtons() {
    const group = $(".mse-windows");
    group.textContent = "";
    const unit = (S.vol.modality || "").toUpperCase() === "CT" ? " HU" : "";
    for (const preset of S.vol.windows) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = preset.name;
        button.title = `Window: center ${preset.center}${unit}, width ${preset.width}${unit} (the picture only; the model's maps do not change)`;
        button.dataset.window = `${preset.center},${preset.width}`;
        button.addEventListener("click", () => setWindow(preset.center, preset.width));
        group.appendChild(button);
    }
}

function syncVolume() {
    const vol = S.vol;
    if (!vol) return;
    const track = activeTrack(), shown = track.shown;
    const slider = $(".mse-slice");
    slider.max = String(track.depth);
    slider.value = String(shown + 1);
    $(".mse-slice-value").textContent = `${shown + 1} / ${track.depth}` + (planeActive() ? "" : provenanceWord(shown)) +
        (track.loading ? " (loading)" : "");
    $(".mse-slice-plane").textContent = hasPlanes() ? PLANE_NAMES[vol.active] : "Slice";
    for (const button of element.querySelectorAll(".mse-windows button")) {
        button.classList.toggle("mse-active", button.dataset.window === `${vol.window[0]},${vol.window[1]}`);
    }
    drawStrip();
}

function drawStrip() {
    // The model's uncertainty per slice (band entropy, the most uncertain slice brightest) as a heat
    // bar; below it, a green tick for each reviewed slice and an amber one for each edited slice; the
    // slice on screen outlined.
    const vol = S.vol, canvas = $(".mse-strip");
    if (!vol || !canvas.offsetParent) return;
    const step = paintStrip(canvas, activeTrack(), 8);
    if (!planeActive() && vol.provenance) paintProvenance(canvas.getContext("2d"), step, canvas.clientHeight - 3, 3);
}

function paintStrip(canvas, track, ticks) {
    // track: depth, strip (0..1 per slice), reviewed and edited (sets, or null), shown; ticks: px under the heat.
    const { width, height, ratio } = fitCanvas(canvas);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const step = width / track.depth, heat = height - ticks, lut = S.magma, strip = track.strip || [];
    for (let i = 0; i < track.depth; i++) {
        const k = Math.max(0, Math.min(255, Math.round((strip[i] || 0) * 255))) * 3;
        context.fillStyle = `rgb(${lut[k]}, ${lut[k + 1]}, ${lut[k + 2]})`;
        context.fillRect(i * step, 0, Math.ceil(step), heat);
        if (!ticks) continue;
        if (track.reviewed && track.reviewed.has(i)) { context.fillStyle = "#2fbf4a"; context.fillRect(i * step, heat + 1, Math.max(1, step - 1), 2); }
        if (track.edited && track.edited.has(i)) { context.fillStyle = "rgb(255, 196, 0)"; context.fillRect(i * step, heat + 3, Math.max(1, step - 1), 2); }
    }
    context.strokeStyle = "#ffffff";
    context.lineWidth = ticks ? 2 : 1.5;
    context.strokeRect(track.shown * step + 1, 1, Math.max(2, step - 2), Math.max(2, heat - 2));
    return step;
}

function activeTrack() {
    // The slice bar's plane: the acquisition plane (the slice protocol), or the plane being edited.
    const vol = S.vol;
    if (!planeActive()) {
        return { depth: vol.depth, strip: vol.strip, stripNats: vol.stripNats, reviewed: vol.reviewed,
                 edited: vol.edited, shown: vol.target ?? vol.index, loading: vol.target !== null };
    }
    return planeTrack(vol.active);
}

function stripSlice(event, canvas = $(".mse-strip"), depth = activeTrack().depth) {
    const box = canvas.getBoundingClientRect();
    return Math.max(0, Math.min(depth - 1, Math.floor((event.clientX - box.left) / box.width * depth)));
}

// ---------------------------------------------------------------- controls

function syncControls() {
    $(".mse-threshold").value = S.threshold;
    $(".mse-threshold-value").textContent = Number(S.threshold).toFixed(2);
    $(".mse-uncertainty").value = S.uncertainty;
    $(".mse-uncertainty-value").textContent = Number(S.uncertainty).toFixed(2);
    $(".mse-opacity").value = S.opacity;
    $(".mse-opacity-value").textContent = Number(S.opacity).toFixed(2);
    $(".mse-local").value = S.localThreshold;
    $(".mse-local-value").textContent = Number(S.localThreshold).toFixed(2);
    $(".mse-size").value = S.size;
    for (const button of element.querySelectorAll("[data-tool]")) {
        button.classList.toggle("mse-active", button.dataset.tool === S.tool);
    }
    $(".mse-toggle-overlay").classList.toggle("mse-active", S.showOverlay);
    $(".mse-tool-help").textContent = TOOLS[S.tool];
    editorCanvas().style.cursor = S.tool === "hand" ? "grab" : S.tool === "component" ? "pointer" :
        S.tool === "crosshair" ? "cell" : "crosshair";
}

function setTool(tool) {
    if (tool === "crosshair" && !hasPlanes()) return;
    if (tool in VOLUME_TOOL_MODES && !S.vol) return;
    S.tool = tool;
    syncControls();
    draw();
}

function setSize(size) {
    const value = Math.round(Number(size));
    if (!(value >= 1 && value <= 500)) { note("Brush size: a whole number of image pixels from 1 to 500."); syncControls(); return; }
    S.size = value;
    syncControls();
    draw();
}

function timed(name, work) {
    const started = performance.now();
    work();
    S.lastTimings[name] = performance.now() - started;
    element.dataset.lastTool = name;
}

function onThreshold(event) {
    if (!S.loaded) return;
    if (!editable()) { event.target.value = S.threshold; return; }
    timed("threshold_ms", () => {
        if (!S.thresholdStep) S.thresholdStep = { kind: "threshold", before: S.threshold };
        setThreshold(Number(event.target.value));
        S.revision++;
        draw();
        publish();
        status();
        clearTimeout(S.thresholdTimer);
        S.thresholdTimer = setTimeout(commitThreshold, THRESHOLD_STEP_MS);
    });
}

function onUncertainty(event) {
    if (!S.loaded) return;
    timed("uncertainty_ms", () => {
        S.uncertainty = Number(event.target.value);
        $(".mse-uncertainty-value").textContent = S.uncertainty.toFixed(2);
        recomputeBand();
        renderOverlay();
        renderHeat();
        draw();
        // The numbers (uncertain area) follow; the mask did not change.
        publish();
    });
}

function onOpacity(event) {
    S.opacity = Number(event.target.value);
    $(".mse-opacity-value").textContent = S.opacity.toFixed(2);
    if (!S.loaded) return;
    timed("opacity_ms", () => { renderOverlay(); draw(); });
}

function imagePoint(event) {
    const box = editorCanvas().getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left - S.view.ox) / S.view.scale);
    const y = Math.floor((event.clientY - box.top - S.view.oy) / (S.view.scale * S.aspect));
    return { x, y, inside: x >= 0 && y >= 0 && x < S.W && y < S.H };
}

function onPointerDown(event) {
    if (!S.loaded) return;
    const canvas = editorCanvas();
    canvas.setPointerCapture(event.pointerId);
    if (S.tool === "hand" || S.spaceDown || event.button === 1 || event.button === 2) {
        S.panning = { x: event.clientX, y: event.clientY, ox: S.view.ox, oy: S.view.oy };
        event.preventDefault();
        return;
    }
    if (event.button !== 0) return;
    if (!editable()) return;
    const point = imagePoint(event);
    if (S.tool === "component") {
        if (point.inside) timed("tool_ms", () => component(point.x, point.y, event.shiftKey));
        return;
    }
    if (S.tool in VOLUME_TOOL_MODES) {
        if (point.inside && S.vol) volumeToolClick(point, event.shiftKey);
        return;
    }
    S.stroke = { tool: S.tool, offsets: brushOffsets(S.size), touched: new Map(), last: null };
    strokeTo(point.x, point.y);
    draw();
}

function onPointerMove(event) {
    if (!S.loaded) return;
    if (S.panning) {
        S.view.ox = S.panning.ox + event.clientX - S.panning.x;
        S.view.oy = S.panning.oy + event.clientY - S.panning.y;
        S.fitted = false;
        draw();
        return;
    }
    const point = imagePoint(event);
    S.cursor = point;
    if (S.stroke) strokeTo(point.x, point.y);
    draw();
    const inside = point.inside ? `x ${point.x}, y ${point.y}: p = ${S.prob[point.y * S.W + point.x].toFixed(3)}, ` +
        `entropy ${S.ent[point.y * S.W + point.x].toFixed(3)} nats` : "";
    $(".mse-pixel").textContent = inside;
}

function onPointerUp() {
    if (S.panning) { S.panning = null; return; }
    if (S.stroke) endStroke();
}

function onWheel(event) {
    if (!S.loaded) return;
    event.preventDefault();
    if (S.vol && !event.ctrlKey && !event.metaKey) {
        // A volume: the wheel moves through the slices (down: the next one), one per mouse notch, a
        // touchpad's small steps added up; Ctrl+wheel (and a touchpad pinch, which the browser sends
        // as one) zooms as it does for an image.
        const delta = event.deltaMode === 1 ? event.deltaY * 40 : event.deltaMode === 2 ? event.deltaY * 800 : event.deltaY;
        S.vol.wheel = Math.abs(delta) >= WHEEL_STEP ? delta : S.vol.wheel + delta;
        if (Math.abs(S.vol.wheel) >= WHEEL_STEP) {
            const direction = Math.sign(S.vol.wheel);
            S.vol.wheel = 0;
            stepSlice(direction);
        }
        return;
    }
    const box = editorCanvas().getBoundingClientRect();
    const mx = event.clientX - box.left, my = event.clientY - box.top;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const fit = Math.min(box.width / S.W, box.height / (S.H * S.aspect));
    const scale = Math.max(fit / 4, Math.min(64, S.view.scale * factor));
    S.view.ox = mx - (mx - S.view.ox) * scale / S.view.scale;
    S.view.oy = my - (my - S.view.oy) * scale / S.view.scale;
    S.view.scale = scale;
    S.fitted = false;
    draw();
}

function typing(target) {
    if (!target) return false;
    const tag = (target.tagName || "").toLowerCase();
    return tag === "textarea" || tag === "select" || target.isContentEditable ||
        (tag === "input" && !["range", "checkbox", "radio", "button"].includes((target.type || "").toLowerCase()));
}

function pressButton(id) {
    const button = document.getElementById(id);
    if (button) button.click();
    else note(`The ${id.replace("-", " ")} button is not on this page.`);
}

function onKey(event) {
    if (typing(event.target) || event.altKey) return;
    const key = event.key.toLowerCase(), command = event.ctrlKey || event.metaKey;
    if (!S.loaded) {
        // Without a case only "next case" means something.
        if (key === "n" && !command) { event.preventDefault(); pressButton("next-case"); }
        return;
    }
    const sliceSteps = { arrowup: -1, arrowdown: 1, pageup: -10, pagedown: 10 };
    if (S.vol && !command && key in sliceSteps) {
        // A focused slider (the slice slider too) moves itself with these keys.
        if ((event.target.type || "").toLowerCase() === "range") return;
        event.preventDefault();
        stepSlice(sliceSteps[key]);
        return;
    }
    let handled = true;
    if (command && (key === "z" || key === "y") && !editable()) handled = true;
    else if (command && key === "z" && event.shiftKey) redo();
    else if (command && key === "z") undo();
    else if (command && key === "y") redo();
    else if (command && key === "s") pressButton("save");
    else if (command) handled = false;
    else if (key === "b") setTool("brush");
    else if (key === "e") setTool("erase");
    else if (key === "t") setTool("local");
    else if (key === "c") setTool("component");
    else if (key === "h") setTool("hand");
    else if (key === "x" && hasPlanes()) setTool("crosshair");
    else if (key === "u" && S.vol) nextUncertainSlice(event.shiftKey ? -1 : 1);
    else if (key === "[") setSize(Math.max(1, S.size - (S.size > 20 ? 5 : 1)));
    else if (key === "]") setSize(Math.min(500, S.size + (S.size >= 20 ? 5 : 1)));
    else if (key === "o") { S.showOverlay = !S.showOverlay; syncControls(); renderOverlay(); draw(); }
    else if (key === "f") { fitView(); draw(); }
    else if (key === "s") pressButton("save");
    else if (key === "a") pressButton("accept");
    else if (key === "k") pressButton("skip");
    else if (key === "n") pressButton("next-case");
    else if (key === " ") { S.spaceDown = true; }
    else handled = false;
    if (handled) event.preventDefault();
}

function bind() {
    // Every pane's canvas: the pane being edited takes the tools, the others the crosshair (volume_planes.js).
    for (const canvas of element.querySelectorAll(".mse-plane-canvas")) {
        canvas.addEventListener("pointerdown", onPanePointerDown);
        canvas.addEventListener("pointermove", (event) => { if (event.currentTarget === editorCanvas()) onPointerMove(event); });
        canvas.addEventListener("pointerup", onPointerUp);
        canvas.addEventListener("pointercancel", onPointerUp);
        canvas.addEventListener("pointerleave", () => { S.cursor = null; draw(); });
        canvas.addEventListener("wheel", onPaneWheel, { passive: false });
        canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    }
    bindPanes();
    bindVolumeTools();
    $(".mse-threshold").addEventListener("input", onThreshold);
    $(".mse-threshold").addEventListener("change", () => commitThreshold());
    $(".mse-uncertainty").addEventListener("input", onUncertainty);
    $(".mse-opacity").addEventListener("input", onOpacity);
    $(".mse-local").addEventListener("input", (event) => {
        S.localThreshold = Number(event.target.value);
        $(".mse-local-value").textContent = S.localThreshold.toFixed(2);
    });
    $(".mse-size").addEventListener("change", (event) => setSize(event.target.value));
    for (const button of element.querySelectorAll("[data-tool]")) {
        button.addEventListener("click", () => setTool(button.dataset.tool));
    }
    const actions = {
        undo, redo,
        "band-fg": () => bandTo(true), "band-bg": () => bandTo(false), fill: fillHoles,
        grow: () => growShrink(true), shrink: () => growShrink(false),
        fit: () => { fitView(); draw(); },
        overlay: () => { S.showOverlay = !S.showOverlay; syncControls(); renderOverlay(); draw(); },
    };
    const viewing = new Set(["fit", "overlay"]);   // the rest change the mask: they need a name
    for (const button of element.querySelectorAll("[data-action]")) {
        button.addEventListener("click", () => {
            if (!S.loaded || (!viewing.has(button.dataset.action) && !editable())) return;
            timed("tool_ms", actions[button.dataset.action]);
        });
    }
    $(".mse-lock").addEventListener("click", goToName);
    $(".mse-slice").addEventListener("input", (event) => goToSlice(Number(event.target.value) - 1));
    const strip = $(".mse-strip");
    strip.addEventListener("click", (event) => {
        if (S.vol) goToSlice(stripSlice(event));
    });
    strip.addEventListener("pointermove", (event) => {
        if (!S.vol) return;
        const index = stripSlice(event), track = activeTrack();
        const marks = [track.edited && track.edited.has(index) ? "edited" : "",
                       track.reviewed && track.reviewed.has(index) ? "reviewed" : "",
                       planeActive() ? "" : provenanceWord(index).replace(" · ", ""),
                       !planeActive() && S.vol.stops.has(index) ? `propagation stopped here: ${S.vol.stops.get(index).reason}` : ""]
            .filter(Boolean);
        strip.title = `Slice ${index + 1}: ${planeActive() ? "mean" : "band"} entropy ${(track.stripNats || [])[index] ?? "?"} nats` +
            (marks.length ? ` (${marks.join(", ")})` : "") + ". Click to go there.";
    });
    // The name box is filled by typing (input events) or by the page after a reload (no event): both
    // are followed, the second by a cheap check twice a second.
    document.addEventListener("input", (event) => {
        if (event.target && event.target.closest && event.target.closest("#annotator")) updateLock();
    }, true);
    setInterval(() => { if (S.loaded) updateLock(); }, 500);
    document.addEventListener("keydown", onKey);
    document.addEventListener("keyup", (event) => { if (event.key === " ") S.spaceDown = false; });
    window.addEventListener("resize", () => { if (S.loaded) { fitHeight(); if (S.fitted) fitView(); draw(); if (S.vol) drawStrip(); } });
    // Anything above the canvas that grows or shrinks (a longer status line) moves it: fit again.
    if (window.ResizeObserver) {
        let queued = false;
        new ResizeObserver(() => {
            if (queued) return;
            queued = true;
            requestAnimationFrame(() => { queued = false; fitHeight(); });
        }).observe(document.body);
    }
    // Leaving the page (or hiding it) sends a pending draft at once instead of after the debounce.
    document.addEventListener("visibilitychange", () => { if (document.visibilityState === "hidden" && S.syncPending) flush(); });
    window.addEventListener("pagehide", () => { if (S.syncPending) flush(); });
    window.addEventListener("beforeunload", (event) => {
        if (S.syncPending) flush();
        if (S.loaded && S.revision !== S.savedRevision) { event.preventDefault(); event.returnValue = ""; }
    });
    // A resized page keeps the user's zoom; only a fitted view is fitted again.
    if (window.ResizeObserver) {
        const observer = new ResizeObserver(() => { if (S.loaded) { if (S.fitted) fitView(); draw(); } });
        for (const canvas of element.querySelectorAll(".mse-plane-canvas")) observer.observe(canvas);
    }
}

// A small page-level API: the app's buttons ask before leaving a case, the browser tests and the
// latency benchmark read timings and the mask without reaching into the canvas.
window.medclipsegEditor = {
    confirmLeave(action) {
        commitThreshold();
        const leaving = !S.loaded || S.revision === S.savedRevision ||
            window.confirm(`Case #${S.meta.case_id} has edits that are not saved as a version ` +
                `(they are kept as a draft). ${action || "Leave it"} anyway?`);
        // The action that leaves carries the editor's value, and the server keeps it as the draft
        // before it opens anything else: an edit still in the debounce is not sent twice, nor lost.
        if (leaving && S.syncPending) { clearTimeout(S.syncTimer); S.syncPending = false; }
        return leaving;
    },
    isDirty: () => S.loaded && S.revision !== S.savedRevision,
    caseId: () => (S.loaded ? S.meta.case_id : null),
    timings: () => ({ ...S.lastTimings }),
    maskRuns: () => (S.loaded ? encodeRuns(S.mask) : null),
    state: () => ({ tool: S.tool, size: S.size, threshold: S.threshold, uncertainty: S.uncertainty,
                    scale: S.view.scale, overlay: S.showOverlay, steps: S.undo.length, redo: S.redo.length,
                    revision: S.revision, saved_revision: S.savedRevision, width: S.W, height: S.H,
                    locked: S.loaded && needsName(), pending: Boolean(S.syncPending) }),
    view: () => ({ ...S.view, aspect: S.aspect }),
    // A volume's slice state, and a way to go to a slice (tests; the page's own controls do the same).
    volume: () => (S.loaded && S.vol ? {
        index: S.vol.index, target: S.vol.target, depth: S.vol.depth, waiting: S.vol.left && S.vol.target !== null,
        reviewed: [...S.vol.reviewed].sort((a, b) => a - b), edited: [...S.vol.edited].sort((a, b) => a - b),
        pending: [...S.vol.pending.keys()].sort((a, b) => a - b), cached: [...S.vol.cache.keys()].sort((a, b) => a - b),
        busy: S.vol.busy, window: [...S.vol.window], timings: S.vol.timings.slice(),
    } : null),
    goToSlice: (index) => goToSlice(index),
    // The three planes (volume_planes.js): their state, the plane being edited, the crosshair.
    planes: () => planesState(),
    activatePlane: (plane) => activatePlane(plane),
    moveCrosshair: (point) => moveCrosshair(point),
    paneMaskRuns: (plane) => paneMaskRuns(plane),
    paneView: (plane) => paneView(plane),
    // The volume tools (volume_tools.js): run one as its button does, read provenance and progress.
    volumeTool: (tool, extra) => volumeTool(tool, extra || {}),
    provenance: () => (S.vol ? S.vol.provenance.slice() : null),
    progress: () => (S.vol ? JSON.parse(element.dataset.progress || "null") : null),
    stops: () => (S.vol ? [...S.vol.stops.values()] : null),
    nextUncertainSlice: (direction) => nextUncertainSlice(direction || 1),
    canUndo: () => Boolean(S.undo.length || serverHasUndo()),
};

function startEditor() {
    bind();
    syncControls();
    watch("value", received);
    received();
}
