// The studio's page: plain DOM over the studio's JSON API (studio/web.py); no build step.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { photos: null, run: null, models: [], status: null, schemas: {} };
// Inputs the page sets itself, never shown under "More settings".
const HIDDEN_INPUTS = new Set(["input_images", "dry_run", "resume_from", "image", "mask",
  "replicate_weights", "extra_lora", "loras"]);

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const postJson = (path, body) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
});

function showError(section, error) {
  const box = $(`#${section} .error`);
  box.textContent = error ? error.message : "";
  box.hidden = !error;
}

async function guarded(section, busy, work) {
  showError(section, null);
  if (busy) $(busy).hidden = false;
  try { return await work(); } catch (error) { showError(section, error); }
  finally { if (busy) $(busy).hidden = true; }
}

function element(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// Tabs and server status ---------------------------------------------------------------------

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const section of document.querySelectorAll("main section")) section.hidden = section.id !== name;
  if (name === "models") refreshModels();
  if (name === "gallery") refreshGallery();
}

async function pollStatus() {
  try {
    state.status = await api("/api/status");
    const { predict, train } = state.status;
    $("#server-status").textContent = `predict: ${predict.status} · train: ${train.status}`;
    showFamilies(state.status.base_models);
    if (predict.status === "READY" && !state.schemas.predict) await loadSchema("predict");
    if (train.status === "READY" && !state.schemas.train) await loadSchema("train");
  } catch (error) {
    $("#server-status").textContent = `studio unreachable: ${error.message}`;
  }
  setTimeout(pollStatus, state.schemas.predict && state.schemas.train ? 2000 : 1000);
}

// The families the train server's container trains, each as the `base_model` it names; shown
// when there is a choice.
function showFamilies(baseModels) {
  const select = $("#family-choice");
  if (select.options.length > 1) return;
  for (const [title, reference] of Object.entries(baseModels || {})) {
    select.append(element("option", { value: reference, textContent: title }));
  }
  select.closest("label").hidden = select.options.length < 3;
}

// Forms from the servers' schemas: each field's default as its placeholder, choices as options;
// a field left empty is not sent, so the server's documented default applies.
async function loadSchema(mode) {
  const schema = await api(`/api/schema/${mode}`);
  state.schemas[mode] = schema;
  const form = mode === "train" ? $("#train-form") : $("#generate-form");
  // A field names the input, or the inputs one container or the other calls it by (`steps`
  // in FLUX.1's trainer): it becomes the one the served schema has.
  for (const node of form.querySelectorAll("[data-schema]")) {
    const names = node.dataset.schema.split(" ");
    node.name = node.dataset.schema = names.find((name) => name in schema.properties) || names[0];
  }
  const shown = new Set([...form.querySelectorAll("[data-schema]")].map((n) => n.dataset.schema));
  for (const node of form.querySelectorAll("[data-schema]")) {
    const property = schema.properties[node.dataset.schema];
    node.closest("label").hidden = !property; // e.g. no negative prompt where the family has none
    describe(node, property);
  }
  const more = $(mode === "train" ? "#train-more" : "#predict-more");
  for (const [name, property] of Object.entries(schema.properties)) {
    if (shown.has(name) || HIDDEN_INPUTS.has(name)) continue;
    const input = property.enum ? element("select", { name }) : element("input", { name });
    describe(input, property);
    more.append(element("label", { title: property.description || "" }, name, input));
  }
  if (mode === "train") $("#train-start").disabled = !state.photos;
}

function describe(node, property) {
  if (!property) return;
  node.title = property.description || "";
  node.dataset.type = property.type || "string";
  if (node.tagName === "SELECT") {
    if (node.options.length) return;
    node.append(element("option", { value: "", textContent: `default (${property.default ?? "none"})` }));
    for (const choice of property.enum || []) node.append(element("option", { value: choice, textContent: choice }));
  } else if (property.default !== undefined && property.default !== null) {
    node.placeholder = String(property.default);
  }
  if (property.type === "boolean") node.placeholder = `${property.default} (true/false)`;
}

function formInputs(form, skip = []) {
  const inputs = {};
  for (const node of form.querySelectorAll("[data-type]")) {
    if (skip.includes(node.name) || node.value.trim() === "") continue;
    const value = node.value.trim();
    const type = node.dataset.type;
    inputs[node.name] = type === "integer" ? parseInt(value, 10)
      : type === "number" ? parseFloat(value)
        : type === "boolean" ? value.toLowerCase() === "true" : value;
  }
  return inputs;
}

// Photos ---------------------------------------------------------------------------------------

const readAs = (file, how) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader[how](file);
});

async function addPhotos(files) {
  const settings = formInputs($("#train-form"), ["name"]);
  await guarded("photos", "#photos-busy", async () => {
    $("#review").hidden = true;
    let review;
    if (files.length === 1 && /\.(zip|tar)$/i.test(files[0].name)) {
      review = await api("/api/photos", {
        method: "POST", body: files[0],
        headers: { "Content-Type": "application/zip", "X-File-Name": files[0].name, "X-Training-Settings": JSON.stringify(settings) },
      });
    } else {
      const loose = await Promise.all([...files].map(async (file) => ({ name: file.name, data: await readAs(file, "readAsDataURL") })));
      review = await postJson("/api/photos", { files: loose, settings });
    }
    showReview(review);
  });
}

function showReview(review) {
  state.photos = review;
  const picture = (name) => `/files/photos/${review.photos}/${name}`;
  const { seconds, price } = review.estimate;
  $("#estimate").textContent = `${review.images.length} photos, ${review.steps} steps: about `
    + `${Math.ceil(seconds)} s of training` + (price === null ? "" : `, about $${price.toFixed(2)}`) + ".";
  $("#warnings").replaceChildren(...review.warnings.map((w) => element("li", { textContent: w })));
  $("#skipped").replaceChildren(...review.skipped.map((s) => element("li", { textContent: `Skipped ${s.file}: ${s.reason}` })));
  $("#crops").replaceChildren(...review.images.map((image) => element("figure", { className: "card" },
    element("img", { src: picture(image.thumbnail), alt: `crop of ${image.source}`, className: "crop" }),
    image.mask ? element("img", { src: picture(image.mask), alt: `mask of ${image.source}`, className: "mask" }) : "",
    element("figcaption", {}, element("b", { textContent: image.source + (image.upscaled ? " (upscaled)" : "") }),
      element("textarea", { className: "caption", value: image.caption, rows: 3 }, ))
  )));
  review.images.forEach((image, index) => { $("#crops").children[index].querySelector("textarea").dataset.source = image.source; });
  $("#review").hidden = false;
  $("#train-start").disabled = !state.schemas.train;
}

// Training -------------------------------------------------------------------------------------

async function startTraining(event) {
  event.preventDefault();
  await guarded("photos", null, async () => {
    const captions = {};
    for (const area of document.querySelectorAll("#crops textarea")) captions[area.dataset.source] = area.value;
    const inputs = { ...formInputs($("#train-form")), name: $("#train-form").elements.name.value };
    state.run = await postJson("/api/trainings", { photos: state.photos.photos, captions, inputs });
    $("#run").hidden = false;
    followRun();
  });
}

async function followRun() {
  const run = state.run = await api(`/api/trainings/${state.run.id}`).catch((error) => { showError("photos", error); return state.run; });
  const left = run.seconds_left === null ? "" : `, about ${Math.ceil(run.seconds_left)} s left`;
  const done = ["succeeded", "failed", "canceled"].includes(run.status);
  let text = `Training ${run.name}: ${run.status}, step ${run.step} / ${run.total ?? "?"}${left}`;
  if (run.status === "succeeded") text = `Training ${run.name} finished: the model ${run.model} is in Models.`;
  if (run.status === "canceled") text = `Training ${run.name} was cancelled; nothing was kept.`;
  $("#run-status").textContent = text;
  if (run.error) showError("photos", new Error(run.error));
  $("#run-progress").max = run.total || 1;
  $("#run-progress").value = run.step;
  drawLoss(run.steps);
  const samples = $("#run-samples");
  for (const sample of run.samples.slice(samples.children.length)) {
    samples.append(element("img", { src: sample.thumbnail, alt: `sample at step ${sample.step}`, title: sample.prompt, className: "sample" }));
  }
  $("#train-cancel").disabled = done;
  if (!done) setTimeout(followRun, 1000);
  else refreshModels();
}

function drawLoss(steps) {
  const canvas = $("#loss-curve");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (steps.length < 2) return;
  const losses = steps.map((s) => s.loss);
  const low = Math.min(...losses), high = Math.max(...losses) || 1;
  context.beginPath();
  steps.forEach((s, i) => {
    const x = (i / (steps.length - 1)) * (canvas.width - 10) + 5;
    const y = canvas.height - 5 - ((s.loss - low) / (high - low || 1)) * (canvas.height - 10);
    i ? context.lineTo(x, y) : context.moveTo(x, y);
  });
  context.strokeStyle = "#2563eb";
  context.stroke();
  context.fillText(`loss ${losses.at(-1).toFixed(4)}`, 8, 12);
}

async function cancelTraining() {
  await guarded("photos", null, async () => { state.run = await postJson(`/api/trainings/${state.run.id}/cancel`, {}); });
}

// Models ---------------------------------------------------------------------------------------

async function refreshModels() {
  await guarded("models", null, async () => {
    state.models = await api("/api/models");
    $("#model-list").replaceChildren(...state.models.map(modelCard));
    const options = (blank) => [element("option", { value: "", textContent: blank }),
      ...state.models.map((m) => element("option", { value: m.name, textContent: m.name }))];
    for (const [select, blank] of [[$("#model-choice"), "base model"], [$("#extra-choice"), "none"]]) {
      const chosen = select.value;
      select.replaceChildren(...options(blank));
      select.value = state.models.some((m) => m.name === chosen) ? chosen : "";
    }
    showTrigger();
  });
}

function modelCard(model) {
  const file = (member) => `/files/models/${model.name}/${member}`;
  const card = element("article", { className: "model" },
    element("h3", { textContent: model.name }),
    element("p", { textContent: model.url ? `loaded from ${model.url}`
      : `${(model.size / 2 ** 20).toFixed(1)} MiB · trigger ${model.trigger} · ${new Date(model.created * 1000).toLocaleString()}` }));
  if (!model.url) {
    card.append(
      element("img", { src: file("loss.png"), alt: "loss plot", className: "loss", loading: "lazy" }),
      element("div", { className: "strip" }, ...model.samples.map((s) => element("img", { src: file(s), alt: s, className: "sample", loading: "lazy" }))),
      element("details", { ontoggle: (e) => loadCard(e.target, file("README.md")) }, element("summary", { textContent: "Model card" }), element("pre")),
      element("details", {}, element("summary", { textContent: "Inputs" }), element("pre", { textContent: JSON.stringify(model.inputs, null, 2) })),
      element("a", { href: `/files/models/${model.name}.tar`, textContent: "Download", download: `${model.name}.tar` }));
  }
  card.append(
    element("button", { type: "button", textContent: "Generate with it", onclick: () => { showTab("generate"); $("#model-choice").value = model.name; showTrigger(); } }),
    element("button", { type: "button", textContent: "Delete", onclick: () => deleteModel(model.name) }));
  return card;
}

async function loadCard(details, url) {
  const pre = $("pre", details);
  if (details.open && !pre.textContent) pre.textContent = await (await fetch(url)).text();
}

async function deleteModel(name) {
  if (!confirm(`Delete the model ${name}?`)) return;
  await guarded("models", null, async () => { await api(`/api/models/${name}`, { method: "DELETE", headers: { "Content-Type": "application/json" } }); });
  refreshModels();
}

async function loadModel(event) {
  event.preventDefault();
  const form = event.target;
  await guarded("models", null, async () => {
    await postJson("/api/models", { url: form.elements.url.value, name: form.elements.name.value });
    form.reset();
  });
  refreshModels();
}

function showTrigger() {
  const model = state.models.find((m) => m.name === $("#model-choice").value);
  $("#trigger-hint").textContent = model && model.trigger ? `trigger: ${model.trigger}` : "";
}

// Generate -------------------------------------------------------------------------------------

const mask = { drawing: false, drawn: false };

// Any image becomes a PNG data URI of its own size (the API's image input).
function pngOf(image) {
  const canvas = element("canvas", { width: image.naturalWidth, height: image.naturalHeight });
  canvas.getContext("2d").drawImage(image, 0, 0);
  return canvas.toDataURL("image/png");
}

function startFrom(src) {
  const image = $("#init-image");
  image.onload = () => {
    const canvas = $("#mask-canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    clearMask();
    $("#paint").hidden = false;
  };
  image.src = src;
}

function clearMask() {
  const canvas = $("#mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  mask.drawn = false;
}

// Strokes are white on a see-through canvas over the image; the mask sent is them on black.
function paint(event) {
  if (!mask.drawing) return;
  const canvas = $("#mask-canvas");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * canvas.width;
  const y = ((event.clientY - box.top) / box.height) * canvas.height;
  const context = canvas.getContext("2d");
  context.strokeStyle = "white";
  context.lineCap = "round";
  context.lineWidth = Math.max(3, canvas.width / 6);
  context.beginPath();
  context.moveTo(...(mask.last || [x, y]));
  context.lineTo(x, y);
  context.stroke();
  mask.last = [x, y];
  mask.drawn = true;
}

function maskPng() {
  const drawn = $("#mask-canvas");
  const canvas = element("canvas", { width: drawn.width, height: drawn.height });
  const context = canvas.getContext("2d");
  context.fillStyle = "black";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(drawn, 0, 0);
  return canvas.toDataURL("image/png");
}

async function generate(event) {
  event.preventDefault();
  const form = $("#generate-form");
  const painting = !$("#paint").hidden;
  const request = {
    inputs: formInputs(form),
    model: form.elements.model.value,
    extra_lora: form.elements.extra_lora.value,
    compare: form.elements.compare.value,
    scales: form.elements.scales.value.split(",").map((s) => s.trim()).filter(Boolean).map(Number),
  };
  if (painting) request.inputs.image = pngOf($("#init-image"));
  if (painting && mask.drawn) request.inputs.mask = maskPng();
  $("#generate-start").disabled = true;
  await guarded("generate", "#generate-busy", async () => {
    const entries = await postJson("/api/generate", request);
    $("#results").replaceChildren(...entries.map((entry) => galleryItem(entry, "eager")));
  });
  $("#generate-start").disabled = false;
}

// Gallery --------------------------------------------------------------------------------------

function galleryItem(entry, loading = "lazy") {
  return element("figure", { className: "shot" },
    element("img", { src: `/files/gallery/${entry.file}`, alt: entry.label, loading, onclick: () => showRequest(entry) }),
    element("figcaption", { textContent: entry.label }));
}

async function refreshGallery() {
  await guarded("gallery", null, async () => {
    const entries = await api("/api/gallery");
    $("#gallery-grid").replaceChildren(...entries.map((entry) => galleryItem(entry)));
  });
}

function showRequest(entry) {
  const body = JSON.stringify({ input: entry.request }, null, 2);
  const server = state.status ? state.status.predict.url : "http://127.0.0.1:5000";
  $("#request-image").src = `/files/gallery/${entry.file}`;
  $("#request-json").textContent = body;
  $("#request-curl").textContent = `curl -s -X POST ${server}/predictions -H 'Content-Type: application/json' \\\n  -d '${JSON.stringify({ input: entry.request }).replaceAll("'", "'\\''")}'`;
  $("#use-image").onclick = () => { $("#request-view").close(); showTab("generate"); startFrom($("#request-image").src); };
  $("#request-view").showModal();
}

// Wiring ---------------------------------------------------------------------------------------

function wire() {
  for (const button of document.querySelectorAll("nav button")) button.onclick = () => showTab(button.dataset.tab);
  $("#photo-files").onchange = (event) => {
    const files = [...event.target.files];
    event.target.value = ""; // the next choice replaces this one
    if (files.length) addPhotos(files);
  };
  const drop = $("#drop");
  drop.ondragover = (event) => event.preventDefault();
  drop.ondrop = (event) => { event.preventDefault(); addPhotos(event.dataTransfer.files); };
  $("#train-form").onsubmit = startTraining;
  $("#family-choice").onchange = (event) => {
    $("#train-form").elements.base_model.value = event.target.value;
  };
  $("#train-cancel").onclick = cancelTraining;
  $("#load-form").onsubmit = loadModel;
  $("#generate-form").onsubmit = generate;
  $("#model-choice").onchange = showTrigger;
  $("#init-file").onchange = async (event) => event.target.files.length && startFrom(await readAs(event.target.files[0], "readAsDataURL"));
  const canvas = $("#mask-canvas");
  canvas.onpointerdown = (event) => { mask.drawing = true; mask.last = null; paint(event); };
  canvas.onpointermove = paint;
  window.addEventListener("pointerup", () => { mask.drawing = false; });
  $("#mask-clear").onclick = clearMask;
  $("#init-clear").onclick = () => { $("#paint").hidden = true; $("#init-file").value = ""; };
  $("#request-close").onclick = () => $("#request-view").close();
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.onclick = () => navigator.clipboard.writeText($(`#${button.dataset.copy}`).textContent);
  }
  pollStatus();
  refreshModels();
}

wire();
