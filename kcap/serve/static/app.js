// The kcap page: sends an image to POST /caption, shows the caption and the other beam
// candidates, and draws a word's attention over the image while it is pointed at or focused.
"use strict";

// The heat map as `kcap caption --attention-plot` draws it (kcap/evaluation/attention_plot.py):
// each word's grid upsampled bilinearly to the image, coloured with matplotlib's "inferno"
// (here 17 evenly spaced stops, interpolated) on one scale, from 0 to the largest weight any
// word of the caption gives a location, at 60% opacity.
const INFERNO = [
  "000004", "0b0724", "210c4a", "3d0965", "57106e", "71196e", "8a226a", "a32c61", "bc3754",
  "d24644", "e45a31", "f1731d", "f98e09", "fcac11", "f9cb35", "f2ea69", "fcffa4",
].map((hex) => [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)));
const OPACITY = Math.round(0.6 * 255);
const HEAT_LONGEST_SIDE = 512; // canvas pixels; CSS stretches the canvas over the image

const $ = (id) => document.getElementById(id);
let shown = null; // {attention, top, heats} of the caption on the page, null without attention
let hovered = null; // index of the word under the pointer
let uploads = 0; // numbers the uploads, so that a slow answer to an older one is dropped
let photoUrl = null;

function colour(value) {
  const position = Math.min(Math.max(value, 0), 1) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(position), INFERNO.length - 2);
  const f = position - i;
  return INFERNO[i].map((c, k) => c + (INFERNO[i + 1][k] - c) * f);
}

// For each output pixel along one axis: the two input cells and the weight of the second,
// with half-pixel centres, as tf.image.resize(method="bilinear") computes them.
function axisWeights(outSize, inSize) {
  const weights = [];
  for (let o = 0; o < outSize; o++) {
    const x = ((o + 0.5) * inSize) / outSize - 0.5;
    const low = Math.floor(x);
    weights.push([Math.max(low, 0), Math.min(Math.ceil(x), inSize - 1), x - low]);
  }
  return weights;
}

function heatImage(context, grid, top) {
  const { width, height } = context.canvas;
  const xs = axisWeights(width, grid[0].length);
  const image = context.createImageData(width, height);
  let p = 0;
  for (const [y0, y1, fy] of axisWeights(height, grid.length)) {
    for (const [x0, x1, fx] of xs) {
      const upper = grid[y0][x0] + (grid[y0][x1] - grid[y0][x0]) * fx;
      const lower = grid[y1][x0] + (grid[y1][x1] - grid[y1][x0]) * fx;
      const [r, g, b] = colour((upper + (lower - upper) * fy) / top);
      image.data.set([r, g, b, OPACITY], p);
      p += 4;
    }
  }
  return image;
}

// Shows word `index`'s attention over the image, or none for null.
function showWord(index) {
  const canvas = $("heat");
  const context = canvas.getContext("2d");
  for (const word of document.querySelectorAll("#caption .word")) {
    word.classList.toggle("active", Number(word.dataset.index) === index);
  }
  if (index === null || !shown || !canvas.width) {
    context.clearRect(0, 0, canvas.width, canvas.height);
    delete canvas.dataset.word;
    return;
  }
  shown.heats[index] ??= heatImage(context, shown.attention[index], shown.top);
  context.putImageData(shown.heats[index], 0, 0);
  canvas.dataset.word = String(index);
}

function focusedWord() {
  const element = document.activeElement;
  return element?.classList.contains("word") ? Number(element.dataset.index) : null;
}

function wordButton(word, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "word";
  button.textContent = word;
  button.dataset.index = String(index);
  button.setAttribute("aria-label", `${word}: show where the model looked`);
  button.addEventListener("pointerenter", () => {
    hovered = index;
    showWord(index);
  });
  button.addEventListener("pointerleave", () => {
    hovered = null;
    showWord(focusedWord());
  });
  button.addEventListener("focus", () => showWord(index));
  button.addEventListener("blur", () => showWord(hovered));
  button.addEventListener("click", () => button.focus()); // Safari does not focus a tapped button
  return button;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

// The server's answer as {caption, ...} or {error}: always words, never a bare status code.
async function readAnswer(response) {
  let data = null;
  try {
    data = JSON.parse(await response.text());
  } catch {
    // not JSON: a proxy's page or a cut-off answer; explained below
  }
  if (data && typeof data.error === "string" && data.error) return data;
  if (response.ok && data && typeof data.caption === "string") return data;
  const why = response.ok ? "an answer that is not a caption" : `${response.status} ${response.statusText}`;
  return { error: `the server sent ${why}, without an explanation.` };
}

async function showPhoto(file) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  const photo = $("photo");
  photo.src = photoUrl;
  photo.alt = `The image ${file.name || "you pasted"}`;
  try {
    await photo.decode();
  } catch {
    photo.removeAttribute("src"); // the server read it, this browser cannot show it
    $("heat").width = 0; // and no heat map without the image under it
    return false;
  }
  const scale = Math.min(1, HEAT_LONGEST_SIDE / Math.max(photo.naturalWidth, photo.naturalHeight));
  $("heat").width = Math.max(1, Math.round(photo.naturalWidth * scale));
  $("heat").height = Math.max(1, Math.round(photo.naturalHeight * scale));
  return true;
}

function showCaption(answer) {
  const { attention } = answer; // null from an export written before kcap serve
  const caption = $("caption");
  caption.replaceChildren();
  answer.words.forEach((word, index) => {
    if (index) caption.append(" ");
    caption.append(attention ? wordButton(word, index) : word);
  });
  if (!answer.words.length) caption.textContent = "(the model gave an empty caption)";
  $("hint").hidden = !attention;
  $("no-attention").hidden = Boolean(attention);
  $("score").textContent = `score ${answer.score.toFixed(2)}`;
  const others = answer.candidates.slice(1).map(({ caption: text, score }) => {
    const item = document.createElement("li");
    const words = document.createElement("span");
    const value = document.createElement("span");
    words.textContent = text;
    value.className = "score";
    value.textContent = score.toFixed(2);
    item.append(words, " ", value);
    return item;
  });
  if (!others.length) {
    const item = document.createElement("li");
    item.className = "none";
    item.textContent =
      answer.beam_size > 1 ? "None: the server sent only its best caption." : "None: greedy decoding (beam size 1).";
    others.push(item);
  }
  $("candidates").replaceChildren(...others);
  shown = attention && { attention, top: Math.max(0, ...attention.flat(2)) || 1, heats: [] };
}

async function captionFile(file) {
  const upload = ++uploads;
  const name = file.name || "the pasted image";
  setError("");
  setStatus(`Captioning ${name}…`);
  const body = new FormData();
  body.append("image", file, file.name || "pasted-image");
  let answer;
  try {
    answer = await readAnswer(await fetch("/caption", { method: "POST", body }));
  } catch (error) {
    answer = { error: `the server could not be reached (${error.message}). Is kcap serve still running?` };
  }
  if (upload !== uploads) return;
  setStatus("");
  if (answer.error) {
    $("result").hidden = true;
    setError(`Could not caption ${name}: ${answer.error}`);
    return;
  }
  hovered = null;
  const visible = await showPhoto(file);
  if (upload !== uploads) return;
  showCaption(answer);
  $("result").hidden = false;
  showWord(null);
  setStatus(`Captioned ${name}: ${answer.caption}` + (visible ? "" : " (this browser cannot display the image)"));
}

async function showModel() {
  try {
    const response = await fetch("/v1/models/kcap");
    const { metadata: m } = await response.json();
    const [height, width] = m.image_size;
    $("model").textContent =
      `${m.decoder} decoder, beam size ${m.beam_size}, ${m.vocabulary_size} words, ` +
      `images at ${height}×${width} · kcap ${m.kcap_version}`;
  } catch {
    // the description line is a nicety; captioning reports its own errors
  }
}

function offer(files) {
  if (files?.length) captionFile(files[0]);
  else setError("Nothing to caption: drop or paste an image file.");
}

function start() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) captionFile(event.target.files[0]);
    event.target.value = ""; // choosing the same file again captions it again
  });
  // The whole window takes drops: a near miss should not open the image in place of the page.
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    offer(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    if (!event.clipboardData.files.length) return; // pasted text goes where it was pasted
    event.preventDefault();
    offer(event.clipboardData.files);
  });
  showModel();
}

start();
