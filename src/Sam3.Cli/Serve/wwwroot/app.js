// sam3 serve page: no framework, no build step. Talks to the JSON API under /api (see /openapi/v1.json).
'use strict';
(() => {
  const $ = id => document.getElementById(id);
  const PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                   [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];
  const MASK_ALPHA = 128;          // translucent masks (0..255)
  const DRAG_MIN = 6;              // screen pixels before a press becomes a box drag

  // Everything shown is a function of this state; undo restores a previous copy of it.
  let image = null;                // { id, width, height, name, bitmap }
  let state = { text: null, points: [], box: null, result: null };
  let history = [];                // previous states
  let canRefine = false;           // the server holds logits of the displayed interactive result
  let busy = false;

  const stage = $('stage'), imageCanvas = $('imageCanvas'), maskCanvas = $('maskCanvas'), markCanvas = $('markCanvas');

  function setStatus(text, isError) { const s = $('status'); s.textContent = text; s.className = isError ? 'error' : ''; }
  function enable(on) {
    for (const id of ['text', 'find', 'clear']) $(id).disabled = !on;
    $('undo').disabled = !on || history.length === 0;
    $('downloadJson').disabled = $('downloadPng').disabled = !on || !state.result;
  }

  async function api(method, url, body, contentType) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.body = contentType ? body : JSON.stringify(body);
      init.headers['Content-Type'] = contentType || 'application/json';
    }
    const r = await fetch(url, init);
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (!r.ok) throw new Error((json && json.error) || `HTTP ${r.status}`);
    return json;
  }

  // COCO compressed RLE (pycocotools' rleFrString) -> run lengths, column-major, starting with zeros.
  function rleCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++; k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // Paints one RLE mask into RGBA pixels (row-major) with a colour.
  function paintRle(pixels, rle, color) {
    const [h, w] = rle.size;
    const counts = rleCounts(rle.counts);
    let i = 0;
    for (let r = 0; r < counts.length; r++) {
      const n = counts[r];
      if (r % 2 === 1) {
        for (let j = i; j < i + n; j++) {
          const x = (j / h) | 0, y = j - x * h, o = (y * w + x) * 4;
          pixels[o] = color[0]; pixels[o + 1] = color[1]; pixels[o + 2] = color[2]; pixels[o + 3] = MASK_ALPHA;
        }
      }
      i += n;
    }
  }

  // The masks shown: every detection of a text prompt, or the best candidate of an interactive call.
  function shownObjects(result) {
    if (!result) return [];
    if (result.mode === 'interactive') return result.best == null ? [] : [result.objects[result.best]];
    return result.objects || [];
  }

  function render() {
    const ctxM = maskCanvas.getContext('2d'), ctxK = markCanvas.getContext('2d');
    ctxM.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    ctxK.clearRect(0, 0, markCanvas.width, markCanvas.height);
    const list = $('objects');
    list.textContent = '';
    if (!image) return;
    const objects = shownObjects(state.result);
    if (objects.length) {
      const data = ctxM.createImageData(image.width, image.height);
      objects.forEach((o, k) => paintRle(data.data, o.rle, PALETTE[k % PALETTE.length]));
      ctxM.putImageData(data, 0, 0);
    }
    const scale = Math.max(1, image.width / 800);
    ctxK.lineWidth = 2 * scale;
    ctxK.font = `${Math.round(14 * scale)}px system-ui, sans-serif`;
    objects.forEach((o, k) => {
      const c = PALETTE[k % PALETTE.length], [x0, y0, x1, y1] = o.box;
      const label = `${state.result.mode === 'interactive' ? 'IoU ' : ''}${o.score.toFixed(2)}`;
      ctxK.strokeStyle = `rgb(${c})`;
      if (state.result.mode !== 'interactive') ctxK.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const tw = ctxK.measureText(label).width + 8 * scale, th = 18 * scale;
      const ly = Math.max(0, y0 - th);
      ctxK.fillStyle = `rgba(${c},0.85)`;
      ctxK.fillRect(x0, ly, tw, th);
      ctxK.fillStyle = '#fff';
      ctxK.fillText(label, x0 + 4 * scale, ly + th - 5 * scale);
      const li = document.createElement('li');
      li.innerHTML = `<span class="swatch" style="background:rgb(${c})"></span>score ${o.score.toFixed(3)}, area ${o.area} px`;
      list.appendChild(li);
    });
    if (state.box) drawBox(ctxK, state.box, '#00e5ff', []);
    for (const p of state.points) {
      ctxK.beginPath();
      ctxK.arc(p.x, p.y, 6 * scale, 0, 2 * Math.PI);
      ctxK.fillStyle = p.positive ? '#22c55e' : '#ef4444';
      ctxK.fill();
      ctxK.strokeStyle = '#fff';
      ctxK.stroke();
    }
  }

  function drawBox(ctx, b, color, dash) {
    ctx.save();
    ctx.setLineDash(dash);
    ctx.strokeStyle = color;
    ctx.strokeRect(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
    ctx.restore();
  }

  function snapshot() { return { text: state.text, points: state.points.slice(), box: state.box, result: state.result }; }

  async function run(label, work) {
    if (busy || !image) return;
    busy = true;
    setStatus(label + '…');
    const before = snapshot();
    try {
      const t0 = performance.now();
      const result = await work();
      history.push(before);
      state.result = result;
      const n = shownObjects(result).length;
      setStatus(`${label}: ${n} mask${n === 1 ? '' : 's'} in ${Math.round(performance.now() - t0)} ms (model ${Math.round(result.elapsedMs)} ms)`);
    } catch (e) {
      state = before;
      setStatus(`${label}: ${e.message}`, true);
    } finally {
      busy = false;
      render();
      enable(true);
    }
  }

  function interactive(label) {
    const refine = canRefine && state.result && state.result.mode === 'interactive';
    return run(label, async () => {
      const r = await api('POST', `/api/images/${image.id}/interactive`, { points: state.points, box: state.box, refine });
      canRefine = true;
      return r;
    });
  }

  function addPoint(x, y, positive) {
    if (state.result && state.result.mode !== 'interactive') { state.points = []; state.box = null; canRefine = false; }
    state.points = state.points.concat([{ x, y, positive }]);
    return interactive(`${positive ? 'positive' : 'negative'} point`);
  }

  function setBox(b) {
    if (state.result && state.result.mode !== 'interactive') { state.points = []; canRefine = false; }
    state.box = b;
    return interactive('box');
  }

  function findText() {
    const text = $('text').value.trim();
    if (!text) { setStatus('type a text prompt first', true); return; }
    state.points = []; state.box = null; canRefine = false;
    return run(`"${text}"`, async () => {
      const r = await api('POST', `/api/images/${image.id}/text`, { text });
      state.text = text;
      return r;
    });
  }

  async function setThreshold() {
    const t = parseFloat($('threshold').value);
    if (!(t >= 0 && t <= 1)) { setStatus('threshold must be in [0, 1]', true); return; }
    if (!image) return; // sent with the next upload
    if (state.result && state.result.mode === 'detector')
      return run(`threshold ${t}`, () => api('POST', `/api/images/${image.id}/threshold`, { threshold: t }));
    try { await api('POST', `/api/images/${image.id}/threshold`, { threshold: t }); } catch (e) { setStatus(e.message, true); }
  }

  function undo() {
    if (busy || history.length === 0) return;
    state = history.pop();
    canRefine = false; // the server's logits belong to the undone step
    setStatus('undone');
    render();
    enable(true);
  }

  async function clearAll() {
    if (busy || !image) return;
    history = []; state = { text: null, points: [], box: null, result: null }; canRefine = false;
    try { await api('POST', `/api/images/${image.id}/reset`, {}); setStatus('cleared'); } catch (e) { setStatus(e.message, true); }
    render();
    enable(true);
  }

  async function openFile(file) {
    if (!file || busy) return;
    busy = true;
    setStatus(`uploading ${file.name}…`);
    try {
      const bitmap = await createImageBitmap(file);
      const t0 = performance.now();
      const info = await api('POST', '/api/images', file, file.type || 'application/octet-stream');
      image = { id: info.imageId, width: info.width, height: info.height, name: file.name, bitmap };
      for (const c of [imageCanvas, maskCanvas, markCanvas]) { c.width = info.width; c.height = info.height; }
      imageCanvas.getContext('2d').drawImage(bitmap, 0, 0, info.width, info.height);
      stage.hidden = false;
      $('placeholder').hidden = true;
      history = []; state = { text: null, points: [], box: null, result: null }; canRefine = false;
      const t = parseFloat($('threshold').value);
      if (t >= 0 && t <= 1 && t !== info.threshold) await api('POST', `/api/images/${image.id}/threshold`, { threshold: t });
      setStatus(`${file.name}: ${info.width}×${info.height}, features in ${Math.round(performance.now() - t0)} ms. Click, drag or type.`);
    } catch (e) {
      setStatus(`upload: ${e.message}`, true);
    } finally {
      busy = false;
      render();
      enable(!!image);
    }
  }

  function download(name, blob) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  const baseName = () => (image ? image.name.replace(/\.[^.]*$/, '') : 'sam3');
  function downloadJson() {
    if (!state.result) return;
    download(`${baseName()}.json`, new Blob([JSON.stringify(state.result, null, 2)], { type: 'application/json' }));
  }
  function downloadPng() {
    if (!state.result) return;
    // what is on screen: the image, the translucent masks, boxes, points and scores
    const c = document.createElement('canvas');
    c.width = image.width; c.height = image.height;
    const ctx = c.getContext('2d');
    for (const layer of [imageCanvas, maskCanvas, markCanvas]) ctx.drawImage(layer, 0, 0);
    c.toBlob(b => download(`${baseName()}.png`, b), 'image/png');
  }

  // ---------------------------------------------------------------- mouse
  let press = null; // { x, y (image px), sx, sy (screen px), dragging }
  function toImage(e) {
    const r = markCanvas.getBoundingClientRect();
    return { x: Math.min(image.width, Math.max(0, (e.clientX - r.left) / r.width * image.width)),
             y: Math.min(image.height, Math.max(0, (e.clientY - r.top) / r.height * image.height)) };
  }
  markCanvas.addEventListener('contextmenu', e => e.preventDefault());
  markCanvas.addEventListener('mousedown', e => {
    if (!image || busy) return;
    const p = toImage(e);
    press = { ...p, sx: e.clientX, sy: e.clientY, button: e.button, shift: e.shiftKey, dragging: false };
  });
  window.addEventListener('mousemove', e => {
    if (!press) return;
    if (!press.dragging && Math.hypot(e.clientX - press.sx, e.clientY - press.sy) >= DRAG_MIN && press.button === 0) press.dragging = true;
    if (press.dragging) {
      render();
      const p = toImage(e);
      const ctx = markCanvas.getContext('2d');
      ctx.lineWidth = 2 * Math.max(1, image.width / 800);
      drawBox(ctx, { x0: Math.min(press.x, p.x), y0: Math.min(press.y, p.y), x1: Math.max(press.x, p.x), y1: Math.max(press.y, p.y) }, '#00e5ff', [8, 6]);
    }
  });
  window.addEventListener('mouseup', e => {
    if (!press) return;
    const start = press;
    press = null;
    if (start.dragging) {
      const p = toImage(e);
      const b = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x), y1: Math.max(start.y, p.y) };
      if (b.x1 - b.x0 >= 1 && b.y1 - b.y0 >= 1) setBox(b); else render();
    } else if (e.target === markCanvas) {
      addPoint(start.x, start.y, start.button === 0 && !start.shift);
    }
  });

  // ---------------------------------------------------------------- controls and keys
  $('file').addEventListener('change', e => openFile(e.target.files[0]));
  $('textForm').addEventListener('submit', e => { e.preventDefault(); findText(); });
  $('threshold').addEventListener('change', setThreshold);
  $('undo').addEventListener('click', undo);
  $('clear').addEventListener('click', clearAll);
  $('downloadJson').addEventListener('click', downloadJson);
  $('downloadPng').addEventListener('click', downloadPng);
  document.addEventListener('dragover', e => { e.preventDefault(); document.body.classList.add('dragover'); });
  document.addEventListener('dragleave', () => document.body.classList.remove('dragover'));
  document.addEventListener('drop', e => { e.preventDefault(); document.body.classList.remove('dragover'); openFile(e.dataTransfer.files[0]); });
  document.addEventListener('keydown', e => {
    const typing = e.target instanceof HTMLInputElement;
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'z' && !typing) { e.preventDefault(); undo(); return; }
    if (e.key === 'Escape') { if (typing) e.target.blur(); else clearAll(); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    switch (e.key.toLowerCase()) {
      case 'u': undo(); break;
      case 'c': clearAll(); break;
      case 'o': $('file').click(); break;
      case 't': if (image) { e.preventDefault(); $('text').focus(); } break;
      case 'j': downloadJson(); break;
      case 'p': downloadPng(); break;
    }
  });

  // for tests and the console: what the page currently shows
  window.sam3 = { get state() { return state; }, get image() { return image; }, get busy() { return busy; } };
  api('GET', '/api/info').then(i => setStatus(`model ${i.model} (${(i.parameters / 1e6).toFixed(1)} M parameters, ${i.device}) — open an image`))
    .catch(e => setStatus(e.message, true));
})();
