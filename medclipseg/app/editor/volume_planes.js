// The three planes of a volume (runs after mask_editor.js, in the same scope).
//
// The acquisition plane keeps the slice protocol of mask_editor.js; the other two planes come from
// the server reformatted on the voxel grid (`server.volume_plane`). One plane is *active*: its slice
// is the editor's own state (S), so every tool works on it, drawn at the voxel spacing's aspect
// ratio in the large pane; the other two are drawn from their cached slices in the small panes. A
// crosshair (a voxel, kept in the acquisition plane's [slice, row, column]) links them: each pane
// shows the slice through it and draws it as two lines. The crosshair tool (X), or Alt+click with
// any tool, moves it to the voxel clicked; a paint tool pressed in another pane (or that pane's
// title, or the plane switch under 900 px) makes that pane the active one.
//
// Edits of a slice of another plane are sent as `plane_edits` (plane, slice, revision, runs) and
// the server writes them into the same 3-D mask. After an edit in one plane, the other planes'
// cached slices are dropped and the ones on screen are asked for again, so they show it.

const PLANE_NAMES = { axial: "Axial", coronal: "Coronal", sagittal: "Sagittal" };
const PLANE_CACHE_REACH = 1;     // neighbours cached on either side of the active plane's slice (other planes)
const MAX_PLANE_SLICES = 6;      // payload.MAX_PLANE_SLICES_PER_ANSWER
const CROSSHAIR_COLOUR = "rgba(80, 255, 120, 0.8)";

function hasPlanes() { return Boolean(S.vol && S.vol.views); }
function planeActive() { return hasPlanes() && S.vol.active !== S.vol.acquisition; }

function toPlane(plane, point) {
    // The voxel `point` (acquisition [slice, row, column]) as [slice, row, column] of `plane`.
    const vol = S.vol, shape = vol.planes[vol.acquisition].shape;
    return vol.planes[plane].axes.map(([axis, flipped]) => (flipped ? shape[axis] - 1 - point[axis] : point[axis]));
}

function fromPlane(plane, coords) {
    const vol = S.vol, shape = vol.planes[vol.acquisition].shape, out = [0, 0, 0];
    vol.planes[plane].axes.forEach(([axis, flipped], k) => { out[axis] = flipped ? shape[axis] - 1 - coords[k] : coords[k]; });
    return out;
}

function freshFor(plane, generation) {
    // A slice of `plane` asked for at `generation` still shows the mask: no other plane was edited since.
    const vol = S.vol;
    return Object.keys(vol.editedAt).every((other) => other === plane || vol.editedAt[other] <= generation);
}

function resetPanes() {
    // One pane (an image, or a volume sent without planes).
    const panes = element.querySelectorAll(".mse-pane");
    panes.forEach((pane, k) => {
        pane.hidden = k > 0;
        pane.classList.toggle("mse-pane-active", k === 0);
        delete pane.dataset.plane;
        pane.querySelector(".mse-pane-head").hidden = k === 0;
        pane.querySelector(".mse-pane-strip").hidden = k === 0;
    });
    $(".mse-panes").classList.remove("mse-three");
    $(".mse-plane-switch").hidden = true;
    $(".mse-crosshair-tool").hidden = true;
    $(".mse-canvas").style.boxShadow = "";
    S.canvas = $(".mse-canvas");
    S.aspect = 1;
    if (S.tool === "crosshair") S.tool = "brush";
}

function setupPlanes(block, entry) {
    const vol = S.vol;
    if (!block.planes) return;
    const acquisition = block.plane, order = [acquisition, ...Object.keys(PLANE_NAMES).filter((p) => p !== acquisition)];
    const panes = [...element.querySelectorAll(".mse-pane")];
    Object.assign(vol, {
        planes: block.planes, acquisition, active: acquisition, width: entry.W, height: entry.H, views: {},
        point: [block.index, Math.floor(entry.H / 2), Math.floor(entry.W / 2)], planePending: new Map(),
        generation: 0, editedAt: { axial: 0, coronal: 0, sagittal: 0 }, planeBusy: false, planeAgain: false,
        planeTimings: [], crosshairStartedAt: null, activateStartedAt: null,
    });
    order.forEach((plane, k) => {
        const info = block.planes[plane], pane = panes[k];
        pane.dataset.plane = plane;
        pane.hidden = false;
        pane.querySelector(".mse-pane-head").hidden = false;
        pane.querySelector(".mse-pane-strip").hidden = false;
        const own = plane === acquisition;
        vol.views[plane] = {
            plane, depth: info.depth, aspect: info.spacing[1] / info.spacing[2], pane,
            canvas: pane.querySelector(".mse-plane-canvas"), strip: pane.querySelector(".mse-pane-strip"),
            cache: own ? vol.cache : new Map(), values: own ? block.strip : null, valuesNats: own ? block.strip_nats : null,
            index: own ? block.index : -1, target: null, left: !own, visitRevision: 0, view: null, fitted: true,
            shown: own ? entry : null, fit: null, drawnKey: "", stripKey: "",
        };
    });
    S.canvas = vol.views[acquisition].canvas;
    S.aspect = vol.views[acquisition].aspect;
    $(".mse-panes").classList.add("mse-three");
    $(".mse-plane-switch").hidden = false;
    $(".mse-crosshair-tool").hidden = false;
    updatePaneClasses();
    syncPlanes();
}

function updatePaneClasses() {
    const vol = S.vol;
    for (const plane of Object.keys(vol.views)) {
        vol.views[plane].pane.classList.toggle("mse-pane-active", plane === vol.active);
    }
    for (const button of element.querySelectorAll(".mse-plane-switch button")) {
        button.classList.toggle("mse-active", button.dataset.plane === vol.active);
    }
    syncControls();
}

function fitPaneHeights(height) {
    // The two small panes share the height of the large one (its title and strip included).
    const vol = S.vol, active = vol.views[vol.active];
    const head = active.pane.querySelector(".mse-pane-head").offsetHeight, strip = active.strip.offsetHeight + 2;
    const small = Math.max(90, Math.floor((head + height + strip - 4) / 2) - head - strip);
    for (const plane of Object.keys(vol.views)) {
        if (plane === vol.active) continue;
        const canvas = vol.views[plane].canvas;
        if (Math.abs(canvas.offsetHeight - small) >= 2) canvas.style.height = `${small}px`;
    }
}

function planeTrack(plane) {
    const vol = S.vol, view = vol.views[plane];
    if (plane === vol.acquisition) {
        return { depth: vol.depth, strip: vol.strip, stripNats: vol.stripNats, reviewed: vol.reviewed, edited: vol.edited,
                 shown: vol.point[0], loading: plane === vol.active ? vol.target !== null : !vol.cache.has(vol.point[0]) };
    }
    const wanted = toPlane(plane, vol.point)[0];
    return { depth: view.depth, strip: view.values, stripNats: view.valuesNats, reviewed: null, edited: null,
             shown: wanted, loading: plane === vol.active ? view.left : !view.cache.has(wanted) };
}

function planeValue() {
    // The editor's value in the three-plane editor: the active plane and the edits of other planes'
    // slices not yet confirmed. In another plane than the acquisition plane, the acquisition slice at
    // the crosshair (as last received) stands in for the slice on screen, which the server does not take.
    const vol = S.vol, value = { plane: vol.active, plane_edits: [...vol.planePending.values()] };
    if (planeActive()) {
        const index = vol.point[0], entry = vol.cache.get(index);
        Object.assign(value, { slice_index: index, width: vol.width, height: vol.height,
                               runs: entry ? entryRuns(entry) : String(vol.width * vol.height) });
    }
    return value;
}

function entryMask(entry) {
    // A cached slice's mask as the editor would start it: the model's at the threshold, or its runs.
    const length = entry.W * entry.H;
    if (!entry.followsModel) return decodeRuns(entry.startRuns, length);
    const t = Math.fround(S.threshold), mask = new Uint8Array(length);
    for (let i = 0; i < length; i++) mask[i] = entry.prob[i] > t ? 1 : 0;
    return mask;
}

function entryRuns(entry) { return entry.followsModel ? encodeRuns(entryMask(entry)).join(",") : entry.startRuns; }

// ---------------------------------------------------------------- edits and what they make stale

function planesAfterEdit() {
    const vol = S.vol, plane = vol.active;
    vol.generation++;
    vol.editedAt[plane] = vol.generation;
    if (plane === vol.acquisition) {
        // The server takes the slice on screen once it is reviewed: an edited slice is.
        vol.reviewed.add(vol.index);
        vol.edited.add(vol.index);
    } else {
        const view = vol.views[plane];
        vol.planePending.set(`${plane}:${view.index}`, { plane, index: view.index, revision: S.revision,
                                                         runs: encodeRuns(S.mask).join(",") });
    }
    for (const other of Object.keys(vol.views)) {
        if (other !== plane) vol.views[other].cache.clear();   // the acquisition view's cache is vol.cache
    }
    clearTimeout(vol.refreshTimer);
    vol.refreshTimer = setTimeout(syncPlanes, 80);
}

// ---------------------------------------------------------------- the server's plane slices

function planesWanted() {
    // The active plane's slice when it is loading, the other panes' slices, then the active plane's neighbours.
    const vol = S.vol, first = [], then = [];
    for (const plane of Object.keys(vol.views)) {
        const view = vol.views[plane], index = toPlane(plane, vol.point)[0];
        if (plane === vol.active) {
            if (plane === vol.acquisition) continue;   // the slice protocol serves it
            if (view.left && !view.cache.has(index)) first.push([plane, index]);
            for (const near of [index + 1, index - 1]) {
                if (near >= 0 && near < view.depth && !view.cache.has(near)) then.push([plane, near]);
            }
        } else if (!view.cache.has(index)) {
            first.push([plane, index]);
        }
    }
    return first.concat(then).slice(0, MAX_PLANE_SLICES);
}

async function syncPlanes() {
    // One request at a time; what changes while it is on its way goes with the next one.
    const vol = S.vol;
    if (!hasPlanes()) return;
    if (vol.planeBusy) { vol.planeAgain = true; return; }
    vol.planeBusy = true;
    try {
        do {
            vol.planeAgain = false;
            const wanted = planesWanted(), strips = Object.keys(vol.views).filter((p) => !vol.views[p].values);
            if (!wanted.length && !strips.length && !vol.planePending.size) break;
            const generation = vol.generation, sentAt = performance.now();
            const request = { ...currentValue(), kind: "plane_request", wanted, strips, annotator: nameText() };
            const answer = await server.volume_plane(request);
            if (S.vol !== vol) return;
            await applyPlaneAnswer(answer, generation, sentAt, wanted.length);
        } while (S.vol === vol && vol.planeAgain);
    } catch (error) {
        if (S.vol === vol) note(`The other planes could not be loaded (${error.message || error}).`);
    } finally {
        vol.planeBusy = false;
    }
}

async function applyPlaneAnswer(answer, generation, sentAt, asked) {
    const vol = S.vol;
    const taken = takeAnswer(answer, "plane");
    if (taken === "error") vol.planeAgain = false;
    if (taken !== true) return;
    for (const [plane, index, revision] of answer.stored_planes || []) {
        const item = vol.planePending.get(`${plane}:${index}`);
        if (item && item.revision <= revision) { vol.planePending.delete(`${plane}:${index}`); vol.serverUndo = true; }
    }
    for (const index of answer.reviewed || []) vol.reviewed.add(index);
    for (const index of answer.edited || []) vol.edited.add(index);
    takeProvenance(answer);
    for (const [plane, strip] of Object.entries(answer.strips || {})) {
        vol.views[plane].values = strip.strip;
        vol.views[plane].valuesNats = strip.strip_nats;
    }
    const entries = await Promise.all((answer.slices || []).map(decodeSlice));
    if (S.vol !== vol) return;
    for (const entry of entries) {
        const plane = entry.plane, view = vol.views[plane];
        if (!view || !windowMatches(entry)) continue;
        if (!freshFor(plane, generation)) { vol.planeAgain = true; continue; }
        entry.generation = generation;
        if (plane === vol.active && entry.index === view.index && !view.left) continue;   // on screen: its edits stay
        view.cache.set(entry.index, entry);
        if (plane === vol.active && view.left && entry.index === toPlane(plane, vol.point)[0]) showPlaneSlice(entry);
    }
    for (const plane of Object.keys(vol.views)) {
        if (plane === vol.acquisition) continue;
        const view = vol.views[plane], centre = toPlane(plane, vol.point)[0];
        for (const index of [...view.cache.keys()]) {
            if (Math.abs(index - centre) > PLANE_CACHE_REACH && index !== view.index) view.cache.delete(index);
        }
    }
    vol.planeTimings.push({ round_trip_ms: performance.now() - sentAt, slices: asked });
    if (vol.planeTimings.length > 200) vol.planeTimings.shift();
    if (planesWanted().some(([plane]) => plane !== vol.active)) vol.planeAgain = true;
    syncVolume();
    draw();
    status();
}

// ---------------------------------------------------------------- the active plane

function putOnScreen(entry) {
    // A decoded slice (of any plane) becomes the editor's state; the layers follow its size.
    if (entry.W !== S.W || entry.H !== S.H) {
        S.W = entry.W; S.H = entry.H;
        S.overlayCanvas = document.createElement("canvas");
        S.overlayCanvas.width = S.W; S.overlayCanvas.height = S.H;
        S.overlayImage = new ImageData(S.W, S.H);
        S.heatCanvas = document.createElement("canvas");
        S.heatCanvas.width = S.W; S.heatCanvas.height = S.H;
        S.heatImage = new ImageData(S.W, S.H);
        S.outlineKey = null;
    }
    const length = S.W * S.H;
    Object.assign(S, {
        prob: entry.prob, ent: entry.ent, imageCanvas: entry.imageCanvas, imagePixels: entry.imagePixels,
        maxProbability: entry.maxProbability, mask: new Uint8Array(length), band: new Uint8Array(length),
        undo: [], redo: [], thresholdStep: null,
    });
    applyStart(entry);
    recomputeMask();
    recomputeBand();
}

function shownTimings() {
    const vol = S.vol, now = performance.now();
    if (vol.navStartedAt !== null) { S.lastTimings.slice_shown_ms = now - vol.navStartedAt; vol.navStartedAt = null; }
    if (vol.activateStartedAt) { S.lastTimings.plane_shown_ms = now - vol.activateStartedAt; vol.activateStartedAt = null; }
}

function leavePlaneSlice() {
    // The active plane's slice (not the acquisition plane's) is left: the cache keeps what it looks
    // like now (its edits are in planePending since the edit).
    const vol = S.vol, view = vol.views[vol.active];
    if (view.left) return;
    if (S.stroke) endStroke();
    commitThreshold();
    if (S.revision !== view.visitRevision) {
        const entry = view.cache.get(view.index) || { ...currentEntry(), index: view.index, plane: vol.active, id: ++DECODED };
        entry.startRuns = encodeRuns(S.mask).join(",");
        entry.followsModel = false;
        entry.rev = (entry.rev || 0) + 1;
        view.cache.set(view.index, entry);
    }
    view.left = true;
}

function showPlaneSlice(entry) {
    const vol = S.vol, view = vol.views[vol.active];
    putOnScreen(entry);
    Object.assign(view, { index: entry.index, target: null, left: false, visitRevision: S.revision, shown: entry });
    if (S.fitted) fitView();
    renderOverlay();
    renderHeat();
    draw();
    syncVolume();
    shownTimings();
    status(`${PLANE_NAMES[vol.active]} slice ${entry.index + 1} of ${view.depth}.`);
    publish();
}

function goToPlaneSlice(target) {
    const vol = S.vol, plane = vol.active, view = vol.views[plane];
    target = Math.max(0, Math.min(view.depth - 1, Math.round(Number(target))));
    if (!Number.isFinite(target)) return;
    const coords = toPlane(plane, vol.point);
    coords[0] = target;
    vol.point = fromPlane(plane, coords);
    if (target === view.index && !view.left) { syncVolume(); draw(); return; }
    vol.navStartedAt = performance.now();
    leavePlaneSlice();
    const entry = view.cache.get(target);
    if (entry && windowMatches(entry)) showPlaneSlice(entry);
    else { view.target = target; syncVolume(); draw(); note(`Loading ${plane} slice ${target + 1}…`); }
    syncPlanes();
}

function activatePlane(plane) {
    // Edit `plane` from now on: its pane becomes the large one and its slice the editor's state.
    const vol = S.vol;
    if (!hasPlanes() || plane === vol.active || !vol.views[plane]) return;
    vol.activateStartedAt = performance.now();
    if (vol.active === vol.acquisition) leaveSlice(); else leavePlaneSlice();
    const before = vol.views[vol.active];
    before.view = S.view; before.fitted = S.fitted; before.shown = vol.active === vol.acquisition
        ? vol.cache.get(vol.index) || before.shown : before.cache.get(before.index) || before.shown;
    before.drawnKey = "";
    vol.active = plane;
    const view = vol.views[plane];
    S.canvas = view.canvas;
    S.aspect = view.aspect;
    S.view = view.view || { scale: 1, ox: 0, oy: 0 };
    S.fitted = !view.view || view.fitted;
    updatePaneClasses();
    fitHeight();
    const index = toPlane(plane, vol.point)[0], entry = view.cache.get(index);
    if (plane === vol.acquisition) {
        vol.target = null;
        if (entry && windowMatches(entry)) showSlice(entry);
        else { vol.target = index; syncVolume(); draw(); note(`Loading slice ${index + 1}…`); }
        syncSlices();
    } else {
        if (entry && windowMatches(entry)) showPlaneSlice(entry);
        else { view.target = index; syncVolume(); draw(); note(`Loading ${plane} slice ${index + 1}…`); }
        props.value = currentValue();
    }
    syncPlanes();
}

// ---------------------------------------------------------------- the crosshair

function moveCrosshair(point) {
    // The crosshair goes to voxel `point` (acquisition [slice, row, column]): each plane shows the
    // slice through it; the active plane changes slice only when the voxel is on another one.
    const vol = S.vol;
    if (!hasPlanes()) return;
    const shape = vol.planes[vol.acquisition].shape;
    point = point.map((v, k) => Math.max(0, Math.min(shape[k] - 1, Math.round(Number(v)))));
    vol.crosshairStartedAt = performance.now();
    const active = vol.active, target = toPlane(active, point)[0];
    if (active === vol.acquisition) {
        const current = vol.target ?? vol.index;
        vol.point = point;
        if (target !== current) { vol.point[0] = current; goToSlice(target); }
    } else {
        vol.point = point;
        goToPlaneSlice(target);
    }
    vol.point = point;
    syncVolume();
    draw();
    syncPlanes();
}

function setPlaneSlice(plane, index) {
    const vol = S.vol, view = vol.views[plane];
    const coords = toPlane(plane, vol.point);
    coords[0] = Math.max(0, Math.min(view.depth - 1, index));
    moveCrosshair(fromPlane(plane, coords));
}

function paneView(plane) {
    // Where a pane draws its slice: the box on the page, the scale, the offsets and the aspect.
    const vol = S.vol;
    if (!hasPlanes() || !vol.views[plane]) return null;
    const view = vol.views[plane], box = view.canvas.getBoundingClientRect();
    const fit = plane === vol.active ? S.view : view.fit;
    if (!fit) return null;
    return { left: box.left, top: box.top, width: box.width, height: box.height, scale: fit.scale, ox: fit.ox,
             oy: fit.oy, aspect: view.aspect };
}

function panePoint(plane, event) {
    const at = paneView(plane), entry = plane === S.vol.active ? { W: S.W, H: S.H } : S.vol.views[plane].shown;
    if (!at || !entry) return null;
    const x = Math.floor((event.clientX - at.left - at.ox) / at.scale);
    const y = Math.floor((event.clientY - at.top - at.oy) / (at.scale * at.aspect));
    return x >= 0 && y >= 0 && x < entry.W && y < entry.H ? { x, y } : null;
}

function crosshairClick(plane, event) {
    const point = panePoint(plane, event);
    if (!point) return;
    const coords = toPlane(plane, S.vol.point);
    coords[1] = point.y;
    coords[2] = point.x;
    moveCrosshair(fromPlane(plane, coords));
}

function drawCrosshair(context, ratio, plane, view, aspect, W, H) {
    const coords = toPlane(plane, S.vol.point), sy = view.scale * aspect;
    const x = view.ox + (coords[2] + 0.5) * view.scale, y = view.oy + (coords[1] + 0.5) * sy;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.strokeStyle = CROSSHAIR_COLOUR;
    context.lineWidth = 1;
    context.setLineDash([5, 4]);
    context.beginPath();
    context.moveTo(view.ox, y); context.lineTo(view.ox + W * view.scale, y);
    context.moveTo(x, view.oy); context.lineTo(x, view.oy + H * sy);
    context.stroke();
    context.setLineDash([]);
}

// ---------------------------------------------------------------- the other panes

function paneOverlay(entry) {
    // The mask of a pane's slice as a layer (fill at the opacity, outline opaque), made once per look.
    const key = `${entry.rev || 0}:${S.threshold}:${S.opacity}:${S.showOverlay}`;
    if (entry.overlayKey === key) return entry.overlay;
    const W = entry.W, H = entry.H, mask = entryMask(entry), image = new ImageData(W, H), data = image.data;
    const fill = Math.round(255 * S.opacity);
    if (S.showOverlay) {
        for (let y = 0, i = 0; y < H; y++) {
            for (let x = 0; x < W; x++, i++) {
                if (!mask[i]) continue;
                const edge = (x > 0 && !mask[i - 1]) || (x < W - 1 && !mask[i + 1]) || (y > 0 && !mask[i - W]) || (y < H - 1 && !mask[i + W]);
                const p = i * 4;
                data[p] = MASK_RGB[0]; data[p + 1] = MASK_RGB[1]; data[p + 2] = MASK_RGB[2]; data[p + 3] = edge ? 255 : fill;
            }
        }
    }
    const canvas = entry.overlay || document.createElement("canvas");
    canvas.width = W; canvas.height = H;
    canvas.getContext("2d").putImageData(image, 0, 0);
    entry.overlay = canvas;
    entry.overlayKey = key;
    return canvas;
}

function paneEntry(plane) {
    // What a pane shows: its plane's slice through the crosshair, else the last one it showed (loading).
    const vol = S.vol, view = vol.views[plane], entry = view.cache.get(toPlane(plane, vol.point)[0]);
    if (entry) view.shown = entry;
    return view.shown;
}

function drawPanes() {
    const vol = S.vol;
    let waiting = false;
    for (const plane of Object.keys(vol.views)) {
        const view = vol.views[plane], track = planeTrack(plane);
        const head = `${PLANE_NAMES[plane]} · ${track.shown + 1} / ${track.depth}` + (track.loading ? " (loading)" : "") +
            (plane === vol.active ? " · editing" : "");
        const headElement = view.pane.querySelector(".mse-pane-head");
        if (headElement.textContent !== head) { headElement.textContent = head; headElement.title = head; }
        if (view.strip.offsetParent) {
            const stripKey = `${track.shown}:${(track.strip || []).length}:${view.strip.clientWidth}`;
            if (view.stripKey !== stripKey) { view.stripKey = stripKey; paintStrip(view.strip, track, 0); }
        }
        if (plane === vol.active) continue;
        waiting = waiting || track.loading;
        const canvas = view.canvas, entry = paneEntry(plane);
        if (!canvas.offsetParent) continue;
        const box = canvas.getBoundingClientRect();
        const key = entry ? `${entry.id}:${entry.rev || 0}:${vol.point.join(",")}:${S.threshold}:${S.opacity}:${S.showOverlay}:` +
            `${box.width}x${box.height}` : "none";
        if (view.drawnKey === key) continue;
        view.drawnKey = key;
        if (!entry) { fitCanvas(canvas); canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height); continue; }
        const scale = Math.min(box.width / entry.W, box.height / (entry.H * view.aspect));
        view.fit = { scale, ox: (box.width - entry.W * scale) / 2, oy: (box.height - entry.H * scale * view.aspect) / 2 };
        const { context, ratio } = drawView(canvas, [entry.imageCanvas, paneOverlay(entry)], view.fit, view.aspect);
        drawCrosshair(context, ratio, plane, view.fit, view.aspect, entry.W, entry.H);
    }
    if (!waiting && vol.crosshairStartedAt !== null) {
        S.lastTimings.crosshair_ms = performance.now() - vol.crosshairStartedAt;
        vol.crosshairStartedAt = null;
    }
}

// ---------------------------------------------------------------- pointer, wheel, buttons

function paneOf(target) {
    const pane = target.closest(".mse-pane");
    return hasPlanes() && pane && pane.dataset.plane ? pane.dataset.plane : null;
}

function onPanePointerDown(event) {
    const plane = paneOf(event.currentTarget);
    if (plane && S.loaded) {
        if (S.tool === "crosshair" || event.altKey) {
            if (event.button === 0) crosshairClick(plane, event);
            event.preventDefault();
            return;
        }
        if (plane !== S.vol.active) {
            if (event.button === 0) {
                activatePlane(plane);
                note(`${PLANE_NAMES[plane]}: this pane is edited now.`);
            }
            return;
        }
    }
    onPointerDown(event);
}

function onPaneWheel(event) {
    const plane = paneOf(event.currentTarget);
    if (!plane || plane === S.vol.active || event.ctrlKey || event.metaKey) { onWheel(event); return; }
    // Over another pane the wheel moves that plane (the crosshair moves with it).
    event.preventDefault();
    const view = S.vol.views[plane];
    view.wheel = (view.wheel || 0) + (event.deltaMode ? event.deltaY * 40 : event.deltaY);
    if (Math.abs(view.wheel) < WHEEL_STEP) return;
    const direction = Math.sign(view.wheel);
    view.wheel = 0;
    setPlaneSlice(plane, toPlane(plane, S.vol.point)[0] + direction);
}

function bindPanes() {
    for (const pane of element.querySelectorAll(".mse-pane")) {
        pane.querySelector(".mse-pane-head").addEventListener("click", () => {
            const plane = paneOf(pane);
            if (plane) activatePlane(plane);
        });
        const strip = pane.querySelector(".mse-pane-strip");
        strip.addEventListener("click", (event) => {
            const plane = paneOf(pane);
            if (plane) setPlaneSlice(plane, stripSlice(event, strip, S.vol.views[plane].depth));
        });
    }
    for (const button of element.querySelectorAll(".mse-plane-switch button")) {
        button.addEventListener("click", () => activatePlane(button.dataset.plane));
    }
}

// ---------------------------------------------------------------- for the tests and the benchmark

function paneMaskRuns(plane) {
    const vol = S.vol;
    if (!hasPlanes()) return null;
    if (plane === vol.active) return encodeRuns(S.mask);
    const entry = paneEntry(plane);
    return entry ? encodeRuns(entryMask(entry)) : null;
}

function planesState() {
    const vol = S.vol;
    if (!S.loaded || !hasPlanes()) return null;
    const panes = {};
    for (const plane of Object.keys(vol.views)) {
        const view = vol.views[plane], track = planeTrack(plane), shown = plane === vol.active
            ? (plane === vol.acquisition ? vol.index : view.index) : (view.shown ? view.shown.index : null);
        const fresh = plane === vol.active ? !track.loading : view.cache.has(track.shown);
        panes[plane] = { index: track.shown, shown, depth: view.depth, loading: track.loading, fresh,
                         cached: [...view.cache.keys()].sort((a, b) => a - b), strip: Boolean(track.strip && track.strip.length),
                         aspect: view.aspect };
    }
    return { active: vol.active, acquisition: vol.acquisition, point: vol.point.slice(), panes,
             pending_planes: [...vol.planePending.keys()], busy: vol.planeBusy || vol.busy,
             timings: vol.planeTimings.slice() };
}
