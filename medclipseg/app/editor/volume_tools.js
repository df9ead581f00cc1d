// The volume tools (runs after mask_editor.js and volume_planes.js, in the same scope): interpolation,
// propagation with its two stop limits, 3-D islands / holes / grow / shrink, a component or a 3-D
// threshold brush (a sphere) by click, undo / redo of those steps, the volume's progress bar, the
// slices' provenance on the strip and "next uncertain slice" (U, Shift+U backwards).
//
// The server runs each tool on the whole volume (`server.volume_tool`) and keeps one history of
// steps: the slice edits it receives (one step per slice, which becomes *drawn*) and the tools.
// The editor keeps its own undo only for the strokes on the slice on screen: before a tool it hands
// that slice over (sent with the request, a step on the server) and forgets its strokes. Undo
// (button, Ctrl+Z) undoes the editor's own strokes first, and when there are none asks the server to
// undo its latest step; redo likewise. So undo always takes back the latest thing done.

const PROVENANCE_COLOURS = { drawn: "rgb(255, 196, 0)", interpolated: "#b07cff", propagated: "#3aa0ff",
                             predicted: "#5a5a5a" };
const VOLUME_TOOL_MODES = {
    component3d: "3-D piece: click deletes the 3-D component under the pointer, Shift+click keeps only it",
    sphere3d: "3-D threshold brush: click sets the mask to probability > t inside a ball of the radius (mm)",
};
Object.assign(TOOLS, VOLUME_TOOL_MODES);

function provenanceList(record, depth) {
    const out = new Array(depth).fill("predicted");
    for (const name of ["drawn", "interpolated", "propagated"]) {
        for (const index of (record && record[name]) || []) if (index >= 0 && index < depth) out[index] = name;
    }
    return out;
}

function setupVolumeTools(block) {
    const vol = S.vol;
    Object.assign(vol, { provenance: provenanceList(block.provenance, block.depth), progress: block.progress || null,
                         stops: new Map(), serverUndo: Boolean(block.can_undo), serverRedo: Boolean(block.can_redo),
                         toolBusy: false });
    $(".mse-volume-tools").hidden = false;
    $(".mse-stops").textContent = "";
    drawProgress();
}

function closeVolumeTools() { $(".mse-volume-tools").hidden = true; }

function takeProvenance(answer) {
    // Slice and plane answers carry the provenance too: slice edits make slices drawn.
    if (!S.vol || !answer || !answer.provenance) return;
    S.vol.provenance = provenanceList(answer.provenance, S.vol.depth);
    drawProgress();
}

function serverHasUndo() {
    // Slice edits not yet confirmed become server steps with the next request.
    const vol = S.vol;
    return Boolean(vol && (vol.serverUndo || vol.pending.size || (vol.planePending && vol.planePending.size)));
}

function handOverSlice() {
    // The strokes on the slice on screen become a step of the server's history (sent with the tool
    // request); the editor's own undo of them ends here.
    const vol = S.vol;
    if (S.stroke) endStroke();
    commitThreshold();
    if (!planeActive()) {
        if (S.revision !== vol.visitRevision) {
            const index = vol.index, runs = encodeRuns(S.mask).join(","), before = vol.pending.get(index);
            const painted = (S.paintRevision || 0) !== vol.visitPaint;  // a threshold move alone is not drawing
            vol.pending.set(index, { index, revision: S.revision, runs, drawn: painted || Boolean(before && before.drawn) });
            vol.reviewed.add(index);
            vol.edited.add(index);
            const entry = vol.cache.get(index);
            if (entry) { entry.startRuns = runs; entry.followsModel = false; entry.rev = (entry.rev || 0) + 1; }
        }
        vol.visitRevision = S.revision;
        vol.visitPaint = S.paintRevision || 0;
    } else {
        vol.views[vol.active].visitRevision = S.revision;
    }
    S.undo = [];
    S.redo = [];
}

function onScreenPoint(x, y) {
    // A pixel of the slice being edited as an acquisition voxel [slice, row, column].
    const vol = S.vol;
    if (!planeActive()) return [vol.index, y, x];
    return fromPlane(vol.active, [vol.views[vol.active].index, y, x]);
}

function numberIn(selector, what) {
    const value = $(selector).value.trim();
    if (value === "") return null;
    const number = Number(value);
    if (!Number.isFinite(number)) throw new Error(`${what}: not a number`);
    return number;
}

function toolParams(tool, extra = {}) {
    if (tool === "propagate") {
        const band = numberIn(".mse-stop-entropy", "uncertainty limit"), area = numberIn(".mse-stop-area", "area limit");
        return { start: planeActive() ? S.vol.point[0] : S.vol.index, direction: extra.direction || "both",
                 max_band_entropy: band, max_area_change: area === null ? null : area / 100 };
    }
    if (tool === "grow" || tool === "shrink") return { mm: numberIn(".mse-grow-mm", "millimetres") };
    if (tool === "sphere") return { radius_mm: numberIn(".mse-sphere-mm", "radius"), threshold: S.localThreshold, ...extra };
    return extra;
}

async function volumeTool(tool, extra = {}) {
    const vol = S.vol;
    if (!S.loaded || !vol) return;
    if (!editable()) return;
    if (vol.toolBusy) { note("The previous volume step is still running."); return; }
    let params;
    try { params = toolParams(tool, extra); } catch (error) { note(`${error.message}.`); return; }
    if (tool !== "undo" && tool !== "redo") handOverSlice();
    vol.toolBusy = true;
    element.dataset.toolBusy = "true";
    const started = performance.now();
    const wanted = [vol.index - 1, vol.index, vol.index + 1].filter((i) => i >= 0 && i < vol.depth);
    const request = { ...currentValue(), kind: "tool_request", tool, params, wanted, annotator: nameText() };
    note(`${TOOL_WORDS[tool] || tool}…`);
    try {
        const answer = await server.volume_tool(request);
        if (S.vol !== vol) return;
        await applyToolAnswer(answer, request.revision);
        S.lastTimings[`${tool}_ms`] = performance.now() - started;
        S.lastTimings.tool_round_trip_ms = performance.now() - started;
    } catch (error) {
        if (S.vol === vol) note(`The volume step did not complete (${error.message || error}); the mask is as it was.`);
    } finally {
        vol.toolBusy = false;
        element.dataset.toolBusy = "false";
        element.dataset.toolDone = String((Number(element.dataset.toolDone) || 0) + 1);
    }
}

const TOOL_WORDS = { interpolate: "Interpolating", propagate: "Propagating", remove_islands: "Removing islands",
                     fill_holes: "Filling 3-D holes", grow: "Growing", shrink: "Shrinking", undo: "Undoing",
                     redo: "Redoing", sphere: "3-D threshold brush", delete_component: "Deleting a 3-D piece",
                     keep_component: "Keeping a 3-D piece" };

async function applyToolAnswer(answer, revision) {
    const vol = S.vol;
    if (!answer || answer.kind === "error") { note(answer ? answer.message : "The server did not answer."); return; }
    if (answer.case_id !== S.meta.case_id || answer.session !== S.meta.session) return;
    for (const [index, rev] of answer.stored || []) {
        const item = vol.pending.get(index);
        if (item && item.revision <= rev) vol.pending.delete(index);
    }
    for (const [plane, index, rev] of answer.stored_planes || []) {
        const key = `${plane}:${index}`, item = vol.planePending.get(key);
        if (item && item.revision <= rev) vol.planePending.delete(key);
    }
    for (const index of answer.reviewed || []) vol.reviewed.add(index);
    if (answer.provenance) vol.provenance = provenanceList(answer.provenance, vol.depth);
    if (answer.progress) vol.progress = answer.progress;
    vol.serverUndo = Boolean(answer.can_undo);
    vol.serverRedo = Boolean(answer.can_redo);
    if (answer.kind === "refused") { drawProgress(); drawStrip(); note(answer.message); return; }
    const changed = new Set(answer.changed || []);
    for (const index of changed) if (vol.provenance[index] !== "predicted") vol.edited.add(index);
    if (answer.tool === "propagate") {
        vol.stops = new Map((answer.stops || []).filter((stop) => stop.slice !== null && stop.code !== "end")
            .map((stop) => [stop.slice, stop]));
        showStops();
    }
    // The server's result counts as the newest revision of the slices it changed.
    S.revision = Math.max(S.revision, revision) + 1;
    const entries = await Promise.all((answer.slices || []).map(decodeSlice));
    if (S.vol !== vol) return;
    for (const index of changed) if (index !== vol.index || planeActive()) vol.cache.delete(index);
    for (const entry of entries) {
        entry.window = vol.window.slice();
        if (entry.index === vol.index && !planeActive()) {
            // The slice on screen: its new mask replaces the old one (no undo of strokes across a step).
            putOnScreen(entry);
            vol.visitRevision = S.revision;
            vol.visitPaint = S.paintRevision || 0;
            vol.cache.set(entry.index, entry);
            if (hasPlanes()) vol.views[vol.acquisition].shown = entry;
        } else {
            vol.cache.set(entry.index, entry);
        }
    }
    if (changed.size && hasPlanes()) {
        vol.generation++;
        vol.editedAt[vol.acquisition] = vol.generation;
        for (const plane of Object.keys(vol.views)) {
            if (plane === vol.acquisition) continue;
            vol.views[plane].cache.clear();
            if (plane === vol.active) { vol.views[plane].left = true; }   // asked for again, then shown
        }
        syncPlanes();
    }
    renderOverlay();
    renderHeat();
    draw();
    syncVolume();
    drawProgress();
    publish();
    syncSlices();
    status(answer.message);
}

function showStops() {
    // Where propagation stopped and why, each with a button that goes there.
    const box = $(".mse-stops");
    box.textContent = "";
    for (const [index, stop] of S.vol.stops) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "mse-stop";
        button.dataset.slice = String(index);
        button.textContent = `Go to slice ${index + 1}`;
        button.title = `Propagation ${stop.direction} stopped at slice ${index + 1}: ${stop.reason}. Review it.`;
        button.addEventListener("click", () => goToAcquisitionSlice(index));
        const words = document.createElement("span");
        words.textContent = `${stop.direction}: stopped at ${index + 1} (${stop.reason})`;
        box.append(words, button);
    }
}

function goToAcquisitionSlice(index) {
    const vol = S.vol;
    if (planeActive()) moveCrosshair([index, vol.point[1], vol.point[2]]);
    else goToSlice(index);
}

function nextUncertainSlice(direction) {
    // volume_editing.next_uncertain_slice: after the slice on screen, wrapping round once, the first
    // slice whose band entropy is above the band threshold and that nobody drew.
    const vol = S.vol, strip = vol.stripNats || [], current = planeActive() ? vol.point[0] : (vol.target ?? vol.index);
    for (let offset = 1; offset <= vol.depth; offset++) {
        const index = ((current + direction * offset) % vol.depth + vol.depth) % vol.depth;
        if (vol.provenance[index] !== "drawn" && Number(strip[index]) > S.uncertainty) {
            goToAcquisitionSlice(index);
            note(`Slice ${index + 1}: band entropy ${Number(strip[index]).toFixed(2)} nats, above ${S.uncertainty.toFixed(2)}.`);
            return index;
        }
    }
    note(`No slice nobody drew has a band entropy above ${S.uncertainty.toFixed(2)} nats.`);
    return null;
}

function drawProgress() {
    const vol = S.vol;
    if (!vol) return;
    const counts = { drawn: 0, interpolated: 0, propagated: 0, predicted: 0 };
    for (const value of vol.provenance) counts[value in counts ? value : "predicted"]++;
    const reviewed = new Set([...vol.reviewed, ...vol.provenance.map((v, i) => (v === "drawn" ? i : -1)).filter((i) => i >= 0)]);
    const bar = $(".mse-progress-bar");
    for (const name of Object.keys(counts)) {
        const part = bar.querySelector(`[data-kind="${name}"]`);
        part.style.width = `${(100 * counts[name]) / vol.depth}%`;
        part.title = `${counts[name]} ${name}`;
    }
    $(".mse-progress-text").textContent = `${counts.drawn} drawn · ${counts.interpolated} interpolated · ` +
        `${counts.propagated} propagated · ${counts.predicted} predicted · ${reviewed.size} of ${vol.depth} reviewed`;
    element.dataset.progress = JSON.stringify({ ...counts, reviewed: reviewed.size });
}

function paintProvenance(context, step, top, height) {
    // Under the strip's ticks: interpolated and propagated slices in their colours, stop slices red.
    const vol = S.vol;
    for (let i = 0; i < vol.depth; i++) {
        const value = vol.provenance[i];
        if (value === "interpolated" || value === "propagated") {
            context.fillStyle = PROVENANCE_COLOURS[value];
            context.fillRect(i * step, top, Math.max(1, step - 1), height);
        }
        if (vol.stops.has(i)) {
            context.fillStyle = "#ff3030";
            context.fillRect(i * step + Math.max(0, step / 2 - 1.5), 0, 3, top);
        }
    }
}

function provenanceWord(index) {
    const value = S.vol && S.vol.provenance ? S.vol.provenance[index] : null;
    return value && value !== "predicted" ? ` · ${value}` : "";
}

function bindVolumeTools() {
    const actions = {
        interpolate: () => volumeTool("interpolate"),
        "propagate-up": () => volumeTool("propagate", { direction: "up" }),
        "propagate-down": () => volumeTool("propagate", { direction: "down" }),
        "propagate-both": () => volumeTool("propagate", { direction: "both" }),
        islands: () => volumeTool("remove_islands"),
        "fill3d": () => volumeTool("fill_holes"),
        "grow3d": () => volumeTool("grow"),
        "shrink3d": () => volumeTool("shrink"),
        "undo3d": () => undo(),
        "redo3d": () => redo(),
    };
    for (const button of element.querySelectorAll("[data-volume-action]")) {
        button.addEventListener("click", () => {
            if (!S.loaded || !S.vol || !editable()) return;
            actions[button.dataset.volumeAction]();
        });
    }
}

function volumeToolClick(point, shift) {
    // A click with the 3-D piece or the 3-D threshold brush: the voxel under the pointer.
    const voxel = onScreenPoint(point.x, point.y);
    if (S.tool === "component3d") volumeTool(shift ? "keep_component" : "delete_component", { point: voxel });
    else volumeTool("sphere", { center: voxel });
}
