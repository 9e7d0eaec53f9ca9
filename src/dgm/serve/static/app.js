// dgm studio: plain JavaScript, no build step. Every section appears by capability (the run's "capabilities" from
// /api/runs), never by family name, so a family added later shows up with no change here.
"use strict";

const I18N = {
  en: {
    title: "dgm studio", run: "Model", working: "working…", lang_button: "فارسی",
    no_runs: "No trained runs found. Train one first, e.g. dgm train vae, then reload.",
    hero: "This {thing} does not exist", thing_digit: "digit", thing_garment: "garment", thing_sprite: "shape",
    thing_image: "image",
    hero_hint: "The model made this picture from random numbers; it is not in the training data.",
    class: "Class", random_class: "random", show_steps: "show denoising steps", new_sample: "New sample",
    seed: "seed", link: "link to this one", strip_caption: "Denoising, from noise (left) to image (right)",
    explorer: "Latent explorer",
    explorer_kl: "Each slider moves one of the {k} dimensions the model uses most (sorted by KL, out of {d}).",
    explorer_var: "Each slider moves one of the {k} dimensions that vary most over the test images (out of {d}).",
    explorer_index: "Each slider moves one latent dimension ({k} of {d}).",
    dim: "dim", random_point: "Random point", back_to_sample: "Back to the sample", centre: "Centre",
    draw: "Draw or upload", translate_title: "Translate between domains",
    draw_hint: "Draw with the mouse or a finger, or upload an image.",
    model_sees: "what the model sees", output: "output", reconstruction: "reconstruction", translation: "translation",
    clear: "Clear", upload: "Upload image", reconstruct: "Reconstruct", translate: "Translate",
    to_explorer: "Explore its code", use_a: "Use as start", use_b: "Use as end",
    interp: "Interpolation", interp_hint: "A straight line in latent space between two samples, or two of your images.",
    start: "Start (seed)", end: "End (seed)", steps: "steps", interpolate: "Interpolate", your_image: "your image",
    numbers: "Numbers", no_eval: "No eval.json for this run yet: run `dgm evaluate RUN`.",
    metric: "metric", value: "value", protocol: "protocol",
    figures: "Figures", no_figures: "No figures in this run folder yet.",
    leaderboard: "Leaderboard", no_board: "No run has been evaluated yet.", dataset: "dataset", family: "family",
    step: "step", name: "run", trained_steps: "{family} · {dataset} · step {step}",
    not_comparable: "measured differently across runs: not comparable",
    footer: "dgm: deep generative models as the lecture teaches them",
    opt_sampler: "sampler", opt_steps: "steps", opt_guidance: "guidance", opt_eta: "eta",
    empty_pad: "Draw something first, or upload an image.",
  },
  fa: {
    title: "استودیوی dgm", run: "مدل", working: "در حال کار…", lang_button: "English",
    no_runs: "هیچ مدل آموزش‌دیده‌ای پیدا نشد. اول یکی آموزش دهید، مثلاً dgm train vae، و صفحه را دوباره باز کنید.",
    hero: "این {thing} وجود ندارد", thing_digit: "رقم", thing_garment: "لباس", thing_sprite: "شکل",
    thing_image: "تصویر",
    hero_hint: "مدل این تصویر را از اعداد تصادفی ساخته است؛ در داده‌های آموزشی نیست.",
    class: "کلاس", random_class: "تصادفی", show_steps: "نمایش گام‌های نویززدایی", new_sample: "نمونهٔ تازه",
    seed: "بذر تصادفی", link: "پیوند به همین نمونه", strip_caption: "نویززدایی، از نویز (چپ) تا تصویر (راست)",
    explorer: "کاوشگر فضای نهان",
    explorer_kl: "هر لغزنده یکی از {k} بُعدی را جابه‌جا می‌کند که مدل بیشتر از همه به کار می‌برد (به ترتیب KL، از {d} بُعد).",
    explorer_var: "هر لغزنده یکی از {k} بُعدی را جابه‌جا می‌کند که روی تصاویر آزمون بیشترین تغییر را دارند (از {d} بُعد).",
    explorer_index: "هر لغزنده یک بُعد از فضای نهان را جابه‌جا می‌کند ({k} از {d}).",
    dim: "بُعد", random_point: "نقطهٔ تصادفی", back_to_sample: "بازگشت به نمونه", centre: "مرکز",
    draw: "بکشید یا بارگذاری کنید", translate_title: "ترجمه میان دو دامنه",
    draw_hint: "با ماوس یا انگشت بکشید، یا تصویری بارگذاری کنید.",
    model_sees: "آنچه مدل می‌بیند", output: "خروجی", reconstruction: "بازسازی", translation: "ترجمه",
    clear: "پاک کردن", upload: "بارگذاری تصویر", reconstruct: "بازسازی کن", translate: "ترجمه کن",
    to_explorer: "کاوش کد نهان آن", use_a: "به‌عنوان آغاز", use_b: "به‌عنوان پایان",
    interp: "درون‌یابی", interp_hint: "یک خط راست در فضای نهان، میان دو نمونه یا دو تصویر خودتان.",
    start: "آغاز (بذر)", end: "پایان (بذر)", steps: "گام‌ها", interpolate: "درون‌یابی کن", your_image: "تصویر شما",
    numbers: "اعداد ارزیابی", no_eval: "این مدل هنوز eval.json ندارد: دستور `dgm evaluate RUN` را اجرا کنید.",
    metric: "معیار", value: "مقدار", protocol: "روش اندازه‌گیری",
    figures: "تصاویر و نمودارها", no_figures: "هنوز تصویری در پوشهٔ این مدل نیست.",
    leaderboard: "جدول رده‌بندی", no_board: "هنوز هیچ مدلی ارزیابی نشده است.", dataset: "داده", family: "خانواده",
    step: "گام", name: "مدل", trained_steps: "{family} · {dataset} · گام {step}",
    not_comparable: "در مدل‌ها به روش‌های گوناگون اندازه‌گیری شده: قابل مقایسه نیست",
    footer: "dgm: مدل‌های مولد عمیق، همان‌گونه که در درس آمده‌اند",
    opt_sampler: "نمونه‌بردار", opt_steps: "تعداد گام", opt_guidance: "ضریب هدایت", opt_eta: "اِتا",
    empty_pad: "اول چیزی بکشید یا تصویری بارگذاری کنید.",
  },
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const S = {
  lang: params.get("lang") || localStorage.getItem("dgm-lang") || "en",
  runs: [], run: null, latent: null, z: null, sampleZ: null, seed: null,
  input: null, inputZ: null, ends: { a: null, b: null }, busy: 0,
};

// -- language ------------------------------------------------------------------------------------------------------
function t(key, vars) {
  let s = (I18N[S.lang] && I18N[S.lang][key]) || I18N.en[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace(`{${k}}`, v);
  return s;
}
function num(x) {  // numbers in the page's script (Persian digits in Persian)
  return S.lang === "fa" ? Number(x).toLocaleString("fa-IR", { useGrouping: false }) : String(x);
}
function applyLang() {
  document.documentElement.lang = S.lang;
  document.documentElement.dir = S.lang === "fa" ? "rtl" : "ltr";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  const b = $("lang-toggle");
  b.textContent = t("lang_button");
  b.lang = S.lang === "fa" ? "en" : "fa";
  document.title = t("title");
  localStorage.setItem("dgm-lang", S.lang);
  if (S.run) { renderRunText(); renderNumbers(); renderBoard(); }
}

// -- talking to the server -----------------------------------------------------------------------------------------
function busy(delta) {
  S.busy += delta;
  $("busy").hidden = S.busy <= 0;
}
function toast(msg) {
  const el = $("toast");
  el.textContent = msg;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}
async function api(path, opts = {}) {
  busy(1);
  try {
    const init = { method: opts.method || (opts.json || opts.form ? "POST" : "GET") };
    if (opts.json) { init.body = JSON.stringify(opts.json); init.headers = { "content-type": "application/json" }; }
    if (opts.form) init.body = opts.form;
    const r = await fetch(path, init);
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    return body;
  } catch (e) {
    toast(e.message);
    throw e;
  } finally {
    busy(-1);
  }
}
const runApi = (what) => `/api/runs/${encodeURIComponent(S.run.id)}/${what}`;

// -- runs -----------------------------------------------------------------------------------------------------------
async function loadRuns() {
  const data = await api("/api/runs");
  S.runs = data.runs.filter((r) => !r.error);
  S.limits = data.limits;
  const sel = $("run-select");
  sel.replaceChildren(...S.runs.map((r) => new Option(`${r.name} (${r.family})`, r.id)));
  $("empty").hidden = S.runs.length > 0;
  $("main").hidden = S.runs.length === 0;
  if (!S.runs.length) return;
  const want = params.get("run");
  const run = S.runs.find((r) => r.id === want) || S.runs[0];
  sel.value = run.id;
  await selectRun(run.id, true);
}

function thingKey(dataset) {
  const d = (dataset || "").toLowerCase();
  if (["digits", "mnist", "usps", "svhn", "emnist"].some((n) => d.includes(n)) && !d.includes("fashion")) return "thing_digit";
  if (d.includes("fashion")) return "thing_garment";
  if (d.includes("sprite")) return "thing_sprite";
  return "thing_image";
}

function renderRunText() {
  const r = S.run, c = r.capabilities;
  $("hero-title").textContent = t("hero", { thing: t(thingKey(r.dataset)) });
  $("run-meta").textContent = r.step === null || r.step === undefined ? `${r.family} · ${r.dataset}`
    : t("trained_steps", { family: r.family, dataset: r.dataset, step: num(r.step) });
  $("draw-title").textContent = c.translate && !c.reconstruct ? t("translate_title") : t("draw");
  if (S.latent) renderExplorerHint();
  if (S.seed !== null) $("seed-value").textContent = num(S.seed);
  for (const el of document.querySelectorAll("[data-opt-label]")) el.textContent = t("opt_" + el.dataset.optLabel);
  const cs = $("class-select");
  if (cs.options.length) cs.options[0].text = t("random_class");
}

async function selectRun(id, first) {
  // The detail loads the model once, so its capabilities are what the model really does.
  const detail = await api(`/api/runs/${encodeURIComponent(id)}`);
  S.run = { ...S.runs.find((r) => r.id === id), ...detail };
  const c = S.run.capabilities;
  if (detail.load_error) toast(detail.load_error);
  setAddress();
  S.latent = null; S.z = null; S.sampleZ = null; S.label = null; S.ends = { a: null, b: null };
  $("hero").hidden = !c.sample;
  $("explorer").hidden = !c.decode;
  $("interp").hidden = !c.decode;
  $("draw").hidden = !(c.reconstruct || c.translate || c.encode);
  $("do-reconstruct").hidden = !c.reconstruct;
  $("do-atob").hidden = $("do-btoa").hidden = !c.translate;
  $("to-explorer").hidden = !(c.encode && c.decode);
  $("use-a").hidden = $("use-b").hidden = !(c.encode && c.decode);
  $("a-own").hidden = $("b-own").hidden = true;
  $("seed-a").disabled = $("seed-b").disabled = false;
  $("seen-img").removeAttribute("src"); $("out-img").removeAttribute("src");
  // Half-width cards fill rows in pairs; the numbers card takes a half row when one is left free, else a full one.
  const halves = ["hero", "explorer", "draw", "interp"].filter((k) => !$(k).hidden).length;
  $("numbers").classList.toggle("wide", halves % 2 === 0);
  buildSampleControls(c, first);
  renderRunText();
  renderNumbers();
  renderFigures();
  renderBoard();
  const seed = first && params.has("seed") ? Number(params.get("seed")) : randomSeed();
  const jobs = [];
  if (c.sample) jobs.push(newSample(seed));
  if (c.decode) jobs.push(loadLatent());
  $("seed-a").value = randomSeed() % 1000; $("seed-b").value = randomSeed() % 1000;
  if (c.decode) jobs.push(doInterpolate());
  await Promise.allSettled(jobs);
  if (c.decode && !S.z && S.latent) setZ((S.sampleZ || S.latent.mean).slice());
}

// -- "this digit does not exist" -----------------------------------------------------------------------------------
function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] % 2147483647;
}
function buildSampleControls(c, first) {
  const cs = $("class-select");
  $("class-wrap").hidden = !c.conditional;
  cs.replaceChildren(new Option(t("random_class"), ""),
    ...Array.from({ length: c.num_classes }, (_, i) => new Option(num(i), String(i))));
  if (first && params.has("label")) cs.value = params.get("label");
  $("traj-wrap").hidden = !c.trajectory;
  $("traj-check").checked = c.trajectory && (!first || params.get("steps_strip") !== "0");
  const box = $("sample-options");
  box.replaceChildren();
  for (const o of c.sample_options || []) {
    const label = document.createElement("label");
    const span = document.createElement("span");
    span.dataset.optLabel = o.name;
    span.textContent = t("opt_" + o.name);
    let input;
    if (o.choices) {
      input = document.createElement("select");
      for (const ch of o.choices) input.add(new Option(String(ch), String(ch)));
    } else if (o.type === "bool") {
      input = document.createElement("input"); input.type = "checkbox";
    } else {
      input = document.createElement("input");
      input.type = o.type === "str" ? "text" : "number";
      if (o.type === "float") input.step = "any";
      if (o.type === "int") { input.step = "1"; input.min = "0"; }
      input.className = "num";
    }
    input.dataset.option = o.name;
    input.dataset.type = o.type;
    const fromUrl = first ? params.get("opt." + o.name) : null;
    const v = fromUrl !== null ? fromUrl : o.default;
    if (o.type === "bool") input.checked = v === true || v === "true";
    else if (v !== null && v !== undefined) input.value = String(v);
    label.append(span, " ", input);
    box.append(label);
  }
}
function sampleOptions() {
  const out = {};
  for (const el of document.querySelectorAll("[data-option]")) {
    const k = el.dataset.option, ty = el.dataset.type;
    if (ty === "bool") out[k] = el.checked;
    else if (el.value === "") continue;
    else if (ty === "int" || ty === "float") out[k] = Number(el.value);
    else if (ty === "choice") {
      const o = S.run.capabilities.sample_options.find((x) => x.name === k);
      const hit = o.choices.find((c) => String(c) === el.value);
      out[k] = hit === undefined ? el.value : hit;
    } else out[k] = el.value;
  }
  return out;
}
async function newSample(seed) {
  const c = S.run.capabilities;
  const body = { n: 1, seed, format: "json", options: sampleOptions() };
  const label = $("class-select").value;
  if (c.conditional && label !== "") body.label = Number(label);
  if (c.trajectory && $("traj-check").checked) body.trajectory = true;
  const r = await api(runApi("sample"), { json: body });
  S.seed = r.seed;
  $("sample-img").src = r.image;
  $("sample-img").dataset.seed = String(r.seed);
  $("seed-value").textContent = num(r.seed);
  $("strip-wrap").hidden = !r.strip;
  if (r.strip) $("strip-img").src = r.strip;
  S.label = r.labels ? r.labels[0] : null;  // a conditional decoder draws the same class in the explorer
  if (r.z) { S.sampleZ = r.z[0]; if (S.latent) setZ(S.sampleZ.slice()); }
  S.lastBody = { ...body, run: S.run.id };
  updateLink(body);
}
function updateLink(body) {
  const q = new URLSearchParams({ run: S.run.id, seed: String(S.seed) });
  if (S.lang !== "en") q.set("lang", S.lang);
  if (body.label !== undefined) q.set("label", String(body.label));
  for (const [k, v] of Object.entries(body.options || {})) q.set("opt." + k, String(v));
  $("seed-link").href = `${location.pathname}?${q}`;
  setAddress();
}
function setAddress() {
  // The address bar keeps the run and language but not the seed, so reloading shows a fresh sample.
  const here = new URLSearchParams({ run: S.run.id });
  if (S.lang !== "en") here.set("lang", S.lang);
  history.replaceState(null, "", `${location.pathname}?${here}`);
}

// -- latent explorer -----------------------------------------------------------------------------------------------
const MAX_SLIDERS = 8;
async function loadLatent() {
  S.latent = await api(runApi("latent"));
  buildSliders();
  if (S.sampleZ) setZ(S.sampleZ.slice());
}
function renderExplorerHint() {
  const d = S.run.capabilities.latent_dim, k = Math.min(MAX_SLIDERS, d);
  const key = { kl: "explorer_kl", variance: "explorer_var" }[S.latent.sorted_by] || "explorer_index";
  $("explorer-hint").textContent = t(key, { k: num(k), d: num(d) });
  for (const el of document.querySelectorAll("[data-dim-label]")) el.textContent = `${t("dim")} ${num(el.dataset.dimLabel)}`;
}
function buildSliders() {
  const L = S.latent, box = $("sliders");
  box.replaceChildren();
  if (L.sorted_by !== "index") {  // a header over the numbers: the value, and what the dims are sorted by
    const head = document.createElement("div");
    head.className = "slider head";
    const cells = ["", "", "z", L.sorted_by === "kl" ? "KL" : "var"].map((x) => {
      const c = document.createElement("span"); c.textContent = x; return c;
    });
    head.append(...cells);
    box.append(head);
  }
  L.order.slice(0, MAX_SLIDERS).forEach((dim, rank) => {
    const row = document.createElement("label");
    row.className = "slider";
    const name = document.createElement("span");
    name.className = "dimname";
    name.dataset.dimLabel = String(dim);
    const input = document.createElement("input");
    input.type = "range";
    const lo = L.mean[dim] - 3 * L.std[dim], hi = L.mean[dim] + 3 * L.std[dim];
    Object.assign(input, { min: String(lo), max: String(hi), step: "any" });  // "any": a code is shown exactly
    input.dataset.dim = String(dim);
    input.setAttribute("aria-label", `latent dimension ${dim}`);
    input.addEventListener("input", () => { S.z[dim] = Number(input.value); showVal(input); scheduleDecode(); });
    const score = document.createElement("span");
    score.className = "score";
    score.title = L.sorted_by === "kl" ? "KL (nats)" : L.sorted_by;
    score.textContent = L.sorted_by === "index" ? "" : L.score[rank].toFixed(2);
    const val = document.createElement("output");
    row.append(name, input, val, score);
    box.append(row);
  });
  renderExplorerHint();
}
function showVal(input) {
  input.parentElement.querySelector("output").textContent = Number(input.value).toFixed(2);
}
function setZ(z) {
  S.z = z;
  for (const input of document.querySelectorAll("#sliders input[type=range]")) {
    const v = z[Number(input.dataset.dim)];  // widen the range when a code falls outside mean +- 3 std
    if (v < Number(input.min)) input.min = String(v);
    if (v > Number(input.max)) input.max = String(v);
    input.value = String(v);
    showVal(input);
  }
  scheduleDecode();
}
// One decode in flight at a time; moves made meanwhile are folded into the next request (latest z wins).
let decoding = false, decodeAgain = false;
async function scheduleDecode() {
  if (decoding) { decodeAgain = true; return; }
  decoding = true;
  try {
    do {
      decodeAgain = false;
      const body = { z: [S.z], format: "json" };
      if (S.run.capabilities.conditional && S.label !== null) body.label = S.label;
      const r = await api(runApi("decode"), { json: body });
      $("decoded-img").src = r.image;
    } while (decodeAgain);
  } catch (e) { /* shown by toast */ } finally { decoding = false; }
}
function priorZ() {
  // A random point under the latent's spread: N(mean, std) per dimension (Box-Muller).
  return S.latent.mean.map((m, i) => {
    const u = 1 - Math.random(), v = Math.random();
    return m + S.latent.std[i] * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  });
}

// -- draw, upload, reconstruct, translate --------------------------------------------------------------------------
const pad = $("pad"), ctx = pad.getContext("2d");
let drawn = false;
function clearPad() {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height);
  drawn = false; S.input = null;
}
function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}
let stroke = null;
pad.addEventListener("pointerdown", (e) => {
  if (S.input) clearPad();  // drawing replaces an uploaded picture
  pad.setPointerCapture(e.pointerId);
  stroke = padPoint(e);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(...stroke); ctx.lineTo(...stroke); ctx.stroke();
  drawn = true;
});
pad.addEventListener("pointermove", (e) => {
  if (!stroke) return;
  const p = padPoint(e);
  ctx.beginPath(); ctx.moveTo(...stroke); ctx.lineTo(...p); ctx.stroke();
  stroke = p;
});
for (const ev of ["pointerup", "pointercancel"]) pad.addEventListener(ev, () => { stroke = null; });

function showUpload(file) {
  S.input = file;
  drawn = false;
  const url = URL.createObjectURL(file);
  const im = new Image();
  im.onload = () => {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height);
    const s = Math.min(pad.width / im.width, pad.height / im.height);
    ctx.drawImage(im, (pad.width - im.width * s) / 2, (pad.height - im.height * s) / 2, im.width * s, im.height * s);
    URL.revokeObjectURL(url);
  };
  im.onerror = () => URL.revokeObjectURL(url);
  im.src = url;
}
async function currentImage() {
  if (S.input) return S.input;
  if (!drawn) { toast(t("empty_pad")); throw new Error("empty"); }
  return await new Promise((res) => pad.toBlob(res, "image/png"));
}
async function sendImage(what, extra) {
  const form = new FormData();
  form.append("file", await currentImage(), "input.png");
  form.append("format", "json");
  for (const [k, v] of Object.entries(extra || {})) form.append(k, v);
  return api(runApi(what), { form });
}
async function doReconstruct() {
  const r = await sendImage("reconstruct");
  $("seen-img").src = r.input; $("out-img").src = r.image;
  $("out-caption").textContent = t("reconstruction");
  S.inputZ = r.z;
}
async function doTranslate(direction) {
  const r = await sendImage("translate", { direction });
  $("seen-img").src = r.input; $("out-img").src = r.image;
  $("out-caption").textContent = `${t("translation")} ${direction === "AtoB" ? "A→B" : "B→A"}`;
}
async function useAsEnd(which) {
  const blob = await currentImage();
  S.ends[which] = blob;
  $(`${which}-own`).hidden = false;
  $(`seed-${which}`).disabled = true;
}

// -- interpolation -------------------------------------------------------------------------------------------------
async function doInterpolate() {
  const form = new FormData();
  for (const w of ["a", "b"]) {
    if (S.ends[w]) form.append(w, S.ends[w], `${w}.png`);
    else form.append(`seed_${w}`, String(Number($(`seed-${w}`).value) || 0));
  }
  form.append("steps", String(Math.max(2, Math.min(16, Number($("interp-steps").value) || 8))));
  form.append("format", "json");
  if (S.run.capabilities.conditional && S.label !== null) form.append("label", String(S.label));
  const r = await api(runApi("interpolate"), { form });
  $("interp-img").src = r.image;
}

// -- numbers, figures, leaderboard ---------------------------------------------------------------------------------
function fmt(v) {
  const a = Math.abs(v);
  const s = a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
  return S.lang === "fa" ? Number(s).toLocaleString("fa-IR", { maximumSignificantDigits: 4 }) : s;
}
function table(head, rows) {
  const tb = document.createElement("table");
  const tr = tb.createTHead().insertRow();
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.append(th); }
  const body = tb.createTBody();
  for (const r of rows) {
    const row = body.insertRow();
    for (const cell of r) {
      const td = row.insertCell();
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
    }
  }
  return tb;
}
function renderNumbers() {
  const ev = S.run.eval || {}, box = $("numbers-body");
  const keys = Object.keys(ev);
  if (!keys.length) { box.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: t("no_eval") })); return; }
  const proto = (r) => [r.protocol, r.n !== undefined ? `n=${r.n}` : null, r.unit].filter(Boolean).join(", ");
  box.replaceChildren(table([t("metric"), t("value"), t("protocol")], keys.map((k) => {
    const val = document.createElement("bdi"); val.textContent = fmt(ev[k].value);
    return [k, val, proto(ev[k])];
  })));
}
async function renderFigures() {
  const id = S.run.id, r = S.run;
  const g = $("gallery");
  g.replaceChildren();
  if (!r.figures.length) { g.append(Object.assign(document.createElement("p"), { className: "hint", textContent: t("no_figures") })); return; }
  for (const name of r.figures) {
    const a = document.createElement("a");
    a.href = `/api/runs/${encodeURIComponent(id)}/files/${encodeURIComponent(name)}`;
    a.target = "_blank"; a.rel = "noopener";
    const fig = document.createElement("figure");
    const im = document.createElement("img");
    im.src = a.href; im.loading = "lazy"; im.alt = name;
    const cap = document.createElement("figcaption"); cap.textContent = name;
    fig.append(im, cap); a.append(fig); g.append(a);
  }
}
async function renderBoard() {
  const data = await api("/api/leaderboard");
  const box = $("board");
  box.replaceChildren();
  const groups = Object.entries(data.datasets);
  if (!groups.length) { box.append(Object.assign(document.createElement("p"), { className: "hint", textContent: t("no_board") })); return; }
  for (const [ds, g] of groups) {
    const h = document.createElement("h3"); h.textContent = `${t("dataset")}: ${ds}`;
    const cols = Object.keys(g.columns);
    const rows = g.rows.map((r) => {
      const link = document.createElement("a");
      link.href = `?run=${encodeURIComponent(r.id)}`; link.textContent = r.name;
      link.addEventListener("click", (e) => { e.preventDefault(); $("run-select").value = r.id; selectRun(r.id); });
      return [link, r.family, r.step === null || r.step === undefined ? "" : num(r.step),
        ...cols.map((c) => (r.values[c] === undefined ? "" : fmt(r.values[c])))];
    });
    const arrow = (c) => ({ up: " ↑", down: " ↓" }[g.columns[c].better] || "");
    const tb = table([t("name"), t("family"), t("step"), ...cols.map((c) => c + arrow(c))], rows);
    tb.querySelectorAll("tbody tr").forEach((tr, i) => { if (g.rows[i].id === S.run.id) tr.className = "current"; });
    cols.forEach((c, i) => {
      const col = g.columns[c], th = tb.tHead.rows[0].cells[3 + i];
      th.title = (col.protocol || "") + (col.comparable ? "" : ` (${t("not_comparable")})`);
      if (!col.comparable) th.classList.add("mixed");
      // The best value of a column in bold, where the metric says which way is better and there is a contest.
      const vals = g.rows.map((r) => r.values[c]);
      const have = vals.filter((v) => v !== undefined);
      if (!col.better || have.length < 2 || !col.comparable) return;
      const best = col.better === "up" ? Math.max(...have) : Math.min(...have);
      vals.forEach((v, j) => { if (v === best) tb.tBodies[0].rows[j].cells[3 + i].classList.add("best"); });
    });
    box.append(h, tb);
  }
}

// -- wiring ----------------------------------------------------------------------------------------------------------
function on(id, ev, fn) { $(id).addEventListener(ev, () => fn().catch(() => {})); }
on("new-sample", "click", () => newSample(randomSeed()));
on("run-select", "change", () => selectRun($("run-select").value));
on("z-random", "click", async () => setZ(priorZ()));
on("z-sample", "click", async () => setZ((S.sampleZ || S.latent.mean).slice()));
on("z-centre", "click", async () => setZ(S.latent.mean.slice()));
on("pad-clear", "click", async () => clearPad());
on("do-reconstruct", "click", doReconstruct);
on("do-atob", "click", () => doTranslate("AtoB"));
on("do-btoa", "click", () => doTranslate("BtoA"));
on("to-explorer", "click", async () => {
  if (!S.inputZ) await doReconstruct();
  if (S.inputZ) { setZ(S.inputZ.slice()); $("explorer").scrollIntoView({ behavior: "smooth" }); }
});
on("use-a", "click", () => useAsEnd("a"));
on("use-b", "click", () => useAsEnd("b"));
on("do-interp", "click", doInterpolate);
$("upload").addEventListener("change", (e) => {
  const f = e.target.files[0];
  if (f) { showUpload(f); S.inputZ = null; doReconstructOrTranslate().catch(() => {}); }
  e.target.value = "";
});
async function doReconstructOrTranslate() {
  if (S.run.capabilities.reconstruct) return doReconstruct();
  if (S.run.capabilities.translate) return doTranslate("AtoB");
}
for (const w of ["a", "b"]) {  // the "your image ×" tag goes back to a seed
  $(`${w}-own`).addEventListener("click", () => {
    S.ends[w] = null; $(`${w}-own`).hidden = true; $(`seed-${w}`).disabled = false;
  });
}
$("lang-toggle").addEventListener("click", () => {
  S.lang = S.lang === "fa" ? "en" : "fa";
  applyLang();
  if (S.run && S.lastBody && S.lastBody.run === S.run.id) updateLink(S.lastBody);
  else if (S.run) setAddress();
});

clearPad();
applyLang();
loadRuns().catch(() => {});
