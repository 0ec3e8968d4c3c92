// crisis-tool review page: keyboard-first review of the queue; every decision is POSTed and saved at once.
"use strict";

const S = {labels: {}, tasks: [], progress: null, index: 0, item: null, focus: 0, total: 0, file: ""};
let chain = Promise.resolve();  // actions run one after another: no key press is lost while a request runs

const $ = (id) => document.getElementById(id);
const pct = (x) => (100 * x).toFixed(0) + "%";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function api(path, body) {
  const opts = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({error: res.statusText}));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function showError(err) {
  $("error").textContent = "Not saved: " + err.message;
  $("error").hidden = false;
}

function run(action) {
  chain = chain.then(action).then(() => { $("error").hidden = true; }, showError);
  return chain;
}

// ------------------------------------------------------------------ progress
function renderProgress() {
  const p = S.progress;
  $("counts").textContent = `reviewed ${p.reviewed} · remaining ${p.remaining}`;
  const parts = S.tasks.map((t) => {
    const a = p.agreement[t];
    return a.rate === null ? `${t}: –` : `${t}: ${pct(a.rate)} (${a.agree}/${a.decided})`;
  });
  $("agreement").textContent = "agree with model — " + parts.join(" · ");
  renderHistogram(p.histogram);
}

function renderHistogram(h) {
  const W = 170, H = 44, pad = 12, bw = W / h.bins;
  const peak = Math.max(1, ...h.all);
  const root = svg("svg", {width: W, height: H + pad, viewBox: `0 0 ${W} ${H + pad}`, role: "img",
    "aria-label": "confidence histogram: all posts (grey) and reviewed (blue)"});
  h.all.forEach((n, i) => {
    const hh = (H * n) / peak, hr = (H * h.reviewed[i]) / peak;
    root.append(svg("rect", {x: i * bw + 1, y: H - hh, width: bw - 2, height: hh, class: "all"}));
    root.append(svg("rect", {x: i * bw + 3, y: H - hr, width: bw - 6, height: hr, class: "rev"}));
  });
  for (const [x, t, a] of [[0, "0", "start"], [W / 2, "confidence", "middle"], [W, "1", "end"]]) {
    const label = svg("text", {x, y: H + pad - 1, "text-anchor": a});
    label.textContent = t;
    root.append(label);
  }
  $("hist").replaceChildren(root, el("figcaption", {}, el("span", {class: "k all"}), " all ",
    el("span", {class: "k rev"}), " reviewed"));
}

// ------------------------------------------------------------------ one post
function renderItem() {
  const done = S.index >= S.total;
  $("post").hidden = done;
  $("done").hidden = !done;
  $("where").textContent = done ? `${S.total} / ${S.total}` : `post ${S.index + 1} / ${S.total}`;
  if (done) { $("donefile").textContent = S.file; return; }
  const it = S.item;
  $("postid").textContent = `id ${it.id}` + (it.duplicate_of ? ` · duplicate of ${it.duplicate_of}` : "");
  $("image").hidden = !it.has_image;
  $("noimage").hidden = it.has_image;
  if (it.has_image) $("image").src = `/image/${it.index}`; else $("image").removeAttribute("src");
  $("text").textContent = it.text || "(no text)";
  renderGroup(it);
  renderHeads(it);
}

function renderGroup(it) {
  const others = it.members.length;
  $("group").hidden = others === 0;
  $("members").hidden = true;
  $("membersbtn").firstChild.textContent = "show members ";
  $("applygroup").checked = false;
  if (!others) return;
  $("groupcount").textContent = `near-duplicate group of ${it.group_size} posts`;
  $("members").replaceChildren(...it.members.map((m) => el("li", {},
    m.has_image ? el("img", {src: `/image/${it.index}/member/${m.k}`, alt: `image of ${m.id}`}) : "",
    el("span", {class: "mid"}, m.id), " ", m.text || "")));
}

function renderHeads(it) {
  const box = $("heads");
  box.replaceChildren();
  S.tasks.filter((t) => it.heads[t]).forEach((task, hi) => {
    const head = it.heads[task], decided = it.decisions[task];
    const buttons = S.labels[task].map((label, li) => {
      const classes = ["label"];
      if (label === head.label) classes.push("model");
      if (decided && decided.label === label) classes.push("chosen");
      const b = el("button", {type: "button", class: classes.join(" "), "data-label": label,
        title: `probability ${pct(head.probs[label] || 0)}`},
        el("kbd", {}, String(li + 1)), " " + label,
        el("span", {class: "prob"}, pct(head.probs[label] || 0)));
      b.addEventListener("click", (e) => run(() => decide(task, label, e.shiftKey)));
      return b;
    });
    const accept = el("button", {type: "button", class: "accept"}, "accept model ", el("kbd", {}, "Enter"));
    accept.addEventListener("click", (e) => run(() => decide(task, head.label, e.shiftKey)));
    const status = decided ? (decided.action === "accept" ? "✓ accepted" : "✓ corrected") : "not decided";
    const card = el("div", {class: "head" + (hi === S.focus ? " focus" : "") + (decided ? " decided" : ""),
      "data-task": task},
      el("div", {class: "headtitle"}, el("strong", {}, task),
        el("span", {class: "model"}, `model: ${head.label}`), el("span", {class: "conf"}, pct(head.confidence)),
        el("span", {class: "status"}, status), accept),
      el("div", {class: "labels"}, ...buttons));
    card.addEventListener("click", () => { S.focus = hi; markFocus(); });
    box.append(card);
  });
}

function toggleMembers() {
  $("members").hidden = !$("members").hidden;
  $("membersbtn").firstChild.textContent = $("members").hidden ? "show members " : "hide members ";
}

function markFocus() {
  [...$("heads").children].forEach((c, i) => c.classList.toggle("focus", i === S.focus));
}

function headTasks() { return S.item ? S.tasks.filter((t) => S.item.heads[t]) : []; }

async function load(index) {
  S.index = Math.max(0, Math.min(index, S.total));
  S.item = S.index < S.total ? await api(`/api/item/${S.index}`) : null;
  const tasks = headTasks();
  const open = tasks.findIndex((t) => !S.item.decisions[t]);
  S.focus = open >= 0 ? open : 0;
  renderItem();
}

async function decide(task, label, shift) {
  if (!S.item) return;
  const group = shift || $("applygroup").checked;
  const res = await api("/api/decision", {index: S.item.index, task, label, group});
  S.item = res.item;
  S.progress = res.progress;
  renderProgress();
  const tasks = headTasks();
  const next = tasks.findIndex((t, i) => i > tasks.indexOf(task) && !S.item.decisions[t]);
  const anyOpen = tasks.findIndex((t) => !S.item.decisions[t]);
  if (next >= 0) { S.focus = next; renderItem(); } else if (anyOpen >= 0) { S.focus = anyOpen; renderItem(); } else {
    await load(S.index + 1);
  }
}

// ------------------------------------------------------------------ keys
function onKey(e) {
  if (e.target instanceof HTMLInputElement && e.key === " ") return;
  if (e.ctrlKey || e.altKey || e.metaKey) return;
  const tasks = headTasks();
  const task = tasks[S.focus];
  let handled = true;
  if (/^[1-9]$/.test(e.key) || /^Digit[1-9]$/.test(e.code)) {
    const n = Number(e.code && e.code.startsWith("Digit") ? e.code.slice(5) : e.key) - 1;
    if (task && n < S.labels[task].length) run(() => decide(task, S.labels[task][n], e.shiftKey));
  } else if (e.key === "Enter") {
    if (task) run(() => decide(task, S.item.heads[task].label, e.shiftKey));
  } else if (e.key === "ArrowUp" || e.key === "ArrowDown") {
    if (tasks.length) S.focus = (S.focus + (e.key === "ArrowDown" ? 1 : tasks.length - 1)) % tasks.length;
    markFocus();
  } else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
    const delta = e.key === "ArrowRight" ? 1 : -1;
    run(() => load(S.index + delta));
  } else if (e.key === "m" || e.key === "M") {
    if (!$("group").hidden) toggleMembers();
  } else if (e.key === "g" || e.key === "G") {
    if (!$("group").hidden) $("applygroup").checked = !$("applygroup").checked;
  } else {
    handled = false;
  }
  if (handled) e.preventDefault();
}

async function start() {
  const st = await api("/api/state");
  Object.assign(S, {labels: st.labels, tasks: st.tasks, progress: st.progress, total: st.progress.total,
    file: st.corrections});
  renderProgress();
  await load(st.progress.position);
  document.body.dataset.ready = "1";
}

document.addEventListener("keydown", onKey);
document.addEventListener("DOMContentLoaded", () => {
  $("prev").addEventListener("click", () => run(() => load(S.index - 1)));
  $("next").addEventListener("click", () => run(() => load(S.index + 1)));
  $("membersbtn").addEventListener("click", toggleMembers);
  run(start);
});
