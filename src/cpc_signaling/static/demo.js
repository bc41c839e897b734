// The live demo page: every other user's cursor, selection, typing and status,
// who is here, and comments/annotations anchored to lines. Uses /client.js only.
import { CpcClient, tokenSubject } from "/client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const SAMPLE = `# Launch plan: live cursors in the editor

## Goals
- Everyone sees who is in the document, and where
- Cursors and selections feel instant with many tabs open
- Comments stay anchored to the lines they talk about

## Timeline
1. Monday: ship the presence server behind a flag
2. Tuesday: turn it on for the design team
3. Thursday: everyone, if error rates stay flat

## Open questions
- Should "away" kick in after 5 minutes idle?
- How many cursors before the view gets noisy?
- Do we show typing for read-only viewers?

## Notes
Presence is not content: text sync stays with the CRDT.
The signaling server only says who is here and what they point at.
`;

// ---------------------------------------------------------------------------
// Identity: a user per page. Name and colour come from the user's info (their
// token's `info` claim, or ?name= and ?color= on a server without tokens); a user
// without info gets a made-up name and a colour from their id.

const ADJECTIVES = [
  "Amber", "Brave", "Calm", "Clever", "Coral", "Cosmic", "Curious", "Dapper",
  "Eager", "Fuzzy", "Gentle", "Golden", "Happy", "Jolly", "Keen", "Lucky",
  "Mellow", "Misty", "Nimble", "Plucky", "Quick", "Quiet", "Rosy", "Rusty",
  "Silver", "Sleepy", "Snowy", "Sunny", "Swift", "Witty", "Zesty", "Bold",
];
const ANIMALS = [
  "Otter", "Fox", "Owl", "Panda", "Koala", "Lynx", "Heron", "Badger",
  "Falcon", "Gecko", "Hedgehog", "Ibis", "Jaguar", "Kiwi", "Lemur", "Marten",
  "Narwhal", "Ocelot", "Puffin", "Quokka", "Raven", "Seal", "Tapir", "Walrus",
  "Yak", "Zebra", "Beaver", "Crane", "Dolphin", "Moose", "Wombat", "Bison",
];
// Eight hues far apart, dark enough for white text (a ninth user shares one).
const COLOURS = ["#e5484d", "#0090ff", "#2f9e6a", "#8e4ec6", "#f76b15", "#d6409f", "#b07d00", "#a15c38"];

function hash(text) {
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

// Colours are handed out in join order (the server's order, the same for every
// tab): each user gets their preferred colour unless someone present has it.
const colours = new Map();
let coloursLocked = false;
function colourOf(id) {
  const chosen = infoColour(infoOf(id));
  if (chosen) return chosen;
  const given = colours.get(id);
  if (given) return given;
  const preferred = hash(id) % COLOURS.length;
  if (!coloursLocked) return COLOURS[preferred];
  const present = new Set([id, userId, ...(doc ? doc.users.keys() : [])]);
  const taken = new Set([...colours].filter(([other]) => present.has(other)).map(([, c]) => c));
  let colour = COLOURS[preferred];
  for (let i = 1; i < COLOURS.length && taken.has(colour); i++) {
    colour = COLOURS[(preferred + i) % COLOURS.length];
  }
  colours.set(id, colour);
  return colour;
}

// Every user's info seen in this document (kept after they leave: their comments stay).
const infos = new Map();
function infoOf(id) {
  return doc?.users.get(id)?.info ?? infos.get(id) ?? null;
}
function remember(presence) {
  if (presence.info) infos.set(presence.userId, presence.info);
}

function infoName(info) {
  const name = info?.name;
  if (typeof name !== "string") return null;
  const clean = name.replace(/\s+/g, " ").trim();
  return clean ? [...clean].slice(0, 40).join("") : null;
}

// Only #rgb / #rrggbb: a colour from another user's info goes into style properties.
function infoColour(info) {
  const colour = info?.color ?? info?.colour;
  return typeof colour === "string" && /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(colour) ? colour : null;
}

function madeUpName(userId) {
  const h = hash(userId);
  return `${ADJECTIVES[h % 32]} ${ANIMALS[(h >>> 5) % 32]}`;
}

function person(userId) {
  const name = infoName(infoOf(userId)) ?? madeUpName(userId);
  const words = name.split(" ").filter(Boolean);
  const initials = words.slice(0, 2).map((w) => [...w][0].toUpperCase()).join("");
  return { name, initials, colour: colourOf(userId) };
}

function stored(key, make) {
  try {
    let value = sessionStorage.getItem(key);
    if (!value) sessionStorage.setItem(key, (value = make()));
    return value;
  } catch {
    return make(); // storage disabled: a new identity per load
  }
}

// Without ?doc= every tab opens the same demo document (so "open it in a few tabs"
// works); the URL then names it, and "New document" makes a fresh one.
const DEMO_DOCUMENT = "6f1c2e1a-0d7e-4d53-9a55-0d8f3b0f0b11";
let documentId = params.get("doc");
if (!documentId || !UUID.test(documentId)) {
  documentId = DEMO_DOCUMENT;
  params.set("doc", documentId);
  history.replaceState(null, "", `?${params}`);
}
documentId = documentId.toLowerCase();
// A new person per page load (?user= pins one): a duplicated tab, which copies
// sessionStorage, must not be the same user as its original.
// With ?token= (a server started with --jwt-secret), the user is the token's subject.
const token = params.get("token") || undefined;
const pinned = params.get("user") ?? (token ? tokenSubject(token) : undefined);
const userId = (pinned && UUID.test(pinned) ? pinned : crypto.randomUUID()).toLowerCase();
// Who I am to the others: my token's `info` claim wins (the server uses it); without a
// token, ?name= and ?color= (or ?colour=) become the info my joins carry.
const ownInfo = token ? tokenInfo(token) : urlInfo();
if (ownInfo) infos.set(userId, ownInfo);

function urlInfo() {
  const info = {};
  const name = params.get("name");
  const colour = params.get("color") ?? params.get("colour");
  if (name && name.trim()) info.name = [...name.trim()].slice(0, 40).join("");
  if (colour && infoColour({ color: colour })) info.color = colour;
  return Object.keys(info).length ? info : null;
}

function tokenInfo(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const info = JSON.parse(new TextDecoder().decode(bytes)).info;
    return info && typeof info === "object" && !Array.isArray(info) ? info : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Elements and text metrics.

const text = $("text");
const gutterInner = $("gutter-inner");
const under = $("layer-under");
const over = $("layer-over");
text.value = SAMPLE;

function metrics() {
  const probe = document.createElement("span");
  probe.textContent = "M".repeat(200);
  probe.style.cssText = "position:absolute;visibility:hidden;white-space:pre;";
  probe.style.font = getComputedStyle(text).font;
  document.body.append(probe);
  const charWidth = probe.getBoundingClientRect().width / 200;
  probe.remove();
  const lineHeight = parseFloat(getComputedStyle(text).lineHeight);
  return { charWidth, lineHeight };
}
let { charWidth, lineHeight } = metrics();
document.fonts?.ready.then(() => {
  ({ charWidth, lineHeight } = metrics());
  scheduleRender();
});

function lines() {
  return text.value.split("\n");
}

function toPosition(offset) {
  const before = text.value.slice(0, offset);
  const line = before.split("\n").length - 1;
  return { line, column: offset - (before.lastIndexOf("\n") + 1) };
}

function toOffset({ line, column }) {
  const all = lines();
  const l = Math.min(line, all.length - 1);
  let offset = 0;
  for (let i = 0; i < l; i++) offset += all[i].length + 1;
  return offset + Math.min(column, all[l].length);
}

// ---------------------------------------------------------------------------
// Client and document.

const client = new CpcClient({ userId, token, info: token ? undefined : (ownInfo ?? undefined) });
const statusSelect = $("status");
statusSelect.value = stored("cpc-demo-status", () => "online");
let doc = null;

const conn = $("conn");
const CONN_TEXT = { idle: "Connecting…", connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…", closed: "Offline" };
client.on("state", (state) => {
  conn.dataset.state = state;
  document.documentElement.dataset.conn = state;
  conn.textContent = CONN_TEXT[state] ?? state;
});
client.on("Error", (error) => console.warn("server:", error.code, error.message));

async function start() {
  try {
    doc = await client.join(documentId);
  } catch (error) {
    conn.dataset.state = "closed";
    conn.textContent = "Offline";
    conn.title = String(error.message ?? error);
    return;
  }
  doc.status(statusSelect.value);
  // Everyone in the snapshot joined before us: they pick colours first.
  coloursLocked = true;
  for (const id of doc.users.keys()) colourOf(id);
  colourOf(userId);
  for (const presence of doc.users.values()) remember(presence);
  doc.on("join", (presence) => {
    remember(presence);
    colourOf(presence.userId);
  });
  doc.on("sync", () => doc.users.forEach(remember));
  // A note the server refused is taken back: say why, and give the text back to edit.
  doc.on("noteRefused", (note, error) => {
    renderNotes();
    $("note-error").textContent = `Not posted: ${error.message}`;
    const box = $("note-text");
    if (!box.value) box.value = note.content;
  });
  for (const type of ["sync", "join", "leave", "presence", "connection"]) doc.on(type, scheduleRender);
  doc.on("note", (note) => {
    fresh.add(note);
    renderNotes();
  });
  doc.on("sync", renderNotes);
  document.documentElement.dataset.ready = "true";
  renderNotes();
  scheduleRender();
}

// ---------------------------------------------------------------------------
// Local caret, selection and typing -> the server.

let sent = { cursor: "", selection: "" };
function syncCaret() {
  if (!doc) return;
  const start = toPosition(text.selectionStart);
  const end = toPosition(text.selectionEnd);
  const cursor = text.selectionDirection === "backward" ? start : end;
  const cursorKey = `${cursor.line}:${cursor.column}`;
  const selectionKey = `${start.line}:${start.column}-${end.line}:${end.column}`;
  if (cursorKey !== sent.cursor) {
    sent.cursor = cursorKey;
    doc.cursor(cursor);
    $("caret-pos").textContent = `Ln ${cursor.line + 1}, Col ${cursor.column + 1}`;
    $("note-line").value = String(cursor.line + 1);
    markCurrentLine(cursor.line);
  }
  const empty = text.selectionStart === text.selectionEnd;
  // A collapsed selection is sent once (to clear the old one), not on every move.
  if (selectionKey !== sent.selection && !(empty && sent.selection === "empty")) {
    sent.selection = empty ? "empty" : selectionKey;
    doc.select(start, end);
  }
}

for (const type of ["select", "keyup", "mouseup", "focus", "input"]) text.addEventListener(type, syncCaret);
text.addEventListener("keydown", () => requestAnimationFrame(syncCaret));
text.addEventListener("mousemove", (event) => {
  if (event.buttons) syncCaret();
});
document.addEventListener("selectionchange", () => {
  if (document.activeElement === text) syncCaret();
});

let typingTimer = null;
let typing = false;
text.addEventListener("input", () => {
  if (!doc) return;
  if (!typing) {
    typing = true;
    doc.typing(true);
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(stopTyping, 1500);
  renderGutter();
  scheduleRender();
});
function stopTyping() {
  clearTimeout(typingTimer);
  if (typing && doc) doc.typing(false);
  typing = false;
}
text.addEventListener("blur", stopTyping);
text.addEventListener("keydown", (event) => {
  if (event.key === "Tab" && !event.shiftKey && !event.metaKey && !event.ctrlKey) {
    event.preventDefault(); // two spaces: columns stay one character each
    document.execCommand?.("insertText", false, "  ");
  }
});

statusSelect.addEventListener("change", () => {
  try {
    sessionStorage.setItem("cpc-demo-status", statusSelect.value);
  } catch {
    // storage disabled
  }
  doc?.status(statusSelect.value);
  scheduleRender();
});

text.addEventListener("scroll", scheduleRender);
window.addEventListener("resize", scheduleRender);

// ---------------------------------------------------------------------------
// Rendering: batched into one animation frame however many messages arrive.

let frame = 0;
function scheduleRender() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const shift = `translate(${-text.scrollLeft}px, ${-text.scrollTop}px)`;
  under.style.transform = shift;
  over.style.transform = shift;
  gutterInner.style.transform = `translateY(${-text.scrollTop}px)`;
  renderRemote();
  renderPeople();
  renderTyping();
  renderMe();
}

function el(tag, className, textContent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (textContent !== undefined) node.textContent = textContent;
  return node;
}

function avatar(userId, small = false) {
  const p = person(userId);
  const node = el("span", small ? "avatar sm" : "avatar", p.initials);
  node.style.setProperty("--c", p.colour);
  return node;
}

function clampPosition(pos, all) {
  const line = Math.min(pos.line, all.length - 1);
  return { line, column: Math.min(pos.column, all[line].length) };
}

const cursorNodes = new Map();
const selectionNodes = new Map();

function renderRemote() {
  const users = doc ? doc.users : new Map();
  const all = lines();
  for (const [id, node] of cursorNodes) {
    if (!users.has(id)) {
      node.remove();
      cursorNodes.delete(id);
    }
  }
  for (const [id, nodes] of selectionNodes) {
    if (!users.has(id)) {
      nodes.forEach((n) => n.remove());
      selectionNodes.delete(id);
    }
  }
  for (const [id, presence] of users) {
    const p = person(id);
    // Selection: one band per line, in the user's colour.
    const old = selectionNodes.get(id) ?? [];
    old.forEach((n) => n.remove());
    const bands = [];
    const sel = presence.selection;
    if (sel && (sel.start.line !== sel.end.line || sel.start.column !== sel.end.column)) {
      let [a, b] = [clampPosition(sel.start, all), clampPosition(sel.end, all)];
      if (a.line > b.line || (a.line === b.line && a.column > b.column)) [a, b] = [b, a];
      for (let line = a.line; line <= b.line; line++) {
        const from = line === a.line ? a.column : 0;
        const to = line === b.line ? b.column : all[line].length + 1;
        if (to <= from) continue;
        const band = el("div", "sel");
        band.dataset.user = id;
        band.style.setProperty("--c", p.colour);
        band.style.transform = `translate(${from * charWidth}px, ${line * lineHeight}px)`;
        band.style.width = `${(to - from) * charWidth}px`;
        under.append(band);
        bands.push(band);
      }
    }
    selectionNodes.set(id, bands);

    // Cursor: a caret and a flag with the name.
    let node = cursorNodes.get(id);
    if (!presence.cursor) {
      node?.remove();
      cursorNodes.delete(id);
      continue;
    }
    if (!node) {
      node = el("div", "rc");
      node.dataset.user = id;
      node.style.setProperty("--c", p.colour);
      node.append(el("div", "rc-caret"), el("div", "rc-flag"));
      over.append(node);
      cursorNodes.set(id, node);
    }
    const at = clampPosition(presence.cursor, all);
    node.style.transform = `translate(${at.column * charWidth}px, ${at.line * lineHeight}px)`;
    node.classList.toggle("below", at.line === 0);
    const status = presence.status ?? "online";
    const flag = node.lastChild;
    flag.replaceChildren(document.createTextNode(p.name));
    if (presence.isTyping) flag.append(dots());
    else if (status !== "online") flag.append(el("span", "tag", status));
    node.dataset.status = status;
    node.dataset.typing = String(presence.isTyping);
    // What the browser tests read: the position as received (not clamped).
    node.dataset.pos = `${presence.cursor.line}:${presence.cursor.column}`;
  }
}

function dots() {
  const node = el("span", "dots");
  node.append(el("i"), el("i"), el("i"));
  return node;
}

function describe(presence) {
  const parts = [];
  if (presence.isTyping) parts.push("typing…");
  if (presence.cursor) parts.push(`Ln ${presence.cursor.line + 1}, Col ${presence.cursor.column + 1}`);
  const sel = presence.selection;
  if (sel && (sel.start.line !== sel.end.line || sel.start.column !== sel.end.column)) {
    const count = Math.abs(toOffsetIn(sel.end) - toOffsetIn(sel.start));
    parts.push(`${count} selected`);
  }
  return parts.join(" · ") || "just arrived";
}

function toOffsetIn(pos) {
  return toOffset(pos);
}

function personRow(id, presence, isMe) {
  const p = person(id);
  const status = (isMe ? statusSelect.value : presence.status) ?? "online";
  const row = el("li", "person");
  row.dataset.presenceUser = id;
  row.dataset.status = status;
  row.dataset.typing = String(Boolean(presence?.isTyping));
  const face = avatar(id);
  const dot = el("span", "status-dot");
  face.append(dot);
  const textBox = el("div", "person-text");
  const name = el("div", "person-name", p.name);
  if (isMe) name.append(el("span", "you", "you"));
  textBox.append(name, el("div", "person-meta", isMe ? "editing here" : describe(presence)));
  const pill = el("span", "pill", status);
  pill.dataset.status = status;
  row.append(face, textBox, pill);
  return row;
}

function renderPeople() {
  const list = $("people");
  const rows = [personRow(userId, { isTyping: typing }, true)];
  if (doc) for (const [id, presence] of doc.users) rows.push(personRow(id, presence, false));
  list.replaceChildren(...rows);
  $("people-count").textContent = String(rows.length);
}

function renderTyping() {
  const who = doc ? [...doc.users.values()].filter((p) => p.isTyping).map((p) => person(p.userId).name) : [];
  const box = $("typing");
  if (who.length === 0) {
    box.replaceChildren();
    return;
  }
  const names = who.length === 1 ? who[0] : who.length === 2 ? `${who[0]} and ${who[1]}` : `${who[0]}, ${who[1]} and ${who.length - 2} more`;
  box.replaceChildren(dots(), document.createTextNode(`${names} ${who.length === 1 ? "is" : "are"} typing`));
}

function renderMe() {
  const me = person(userId);
  const face = $("me-avatar");
  face.textContent = me.initials;
  face.style.setProperty("--c", me.colour);
  $("me-name").textContent = me.name;
  $("status-dot").dataset.status = statusSelect.value;
}

// ---------------------------------------------------------------------------
// Gutter: line numbers, note markers; click a number to comment on that line.

let currentLine = 0;
function renderGutter() {
  const count = lines().length;
  const marks = new Map();
  for (const note of doc?.notes ?? []) {
    const line = note.position.line;
    const entry = marks.get(line) ?? { count: 0, colour: person(note.user_id).colour };
    entry.count += 1;
    marks.set(line, entry);
  }
  const rows = [];
  for (let line = 0; line < Math.max(count, ...[...marks.keys()].map((l) => l + 1)); line++) {
    const row = el("div", "gutter-line", String(line + 1));
    row.dataset.line = String(line);
    if (line === currentLine) row.classList.add("current");
    const mark = marks.get(line);
    if (mark) {
      const badge = el("span", "mark", mark.count > 1 ? String(mark.count) : "");
      badge.style.setProperty("--c", mark.colour);
      row.prepend(badge);
      row.title = `${mark.count} comment${mark.count > 1 ? "s" : ""}`;
    }
    rows.push(row);
  }
  gutterInner.replaceChildren(...rows);
  for (const band of under.querySelectorAll(".line-band:not(.flash)")) band.remove();
  for (const line of marks.keys()) {
    const band = el("div", "line-band");
    band.style.top = `${line * lineHeight}px`;
    under.prepend(band);
  }
}

function markCurrentLine(line) {
  if (line === currentLine) return;
  gutterInner.children[currentLine]?.classList.remove("current");
  currentLine = line;
  gutterInner.children[currentLine]?.classList.add("current");
}

gutterInner.addEventListener("click", (event) => {
  const row = event.target.closest(".gutter-line");
  if (!row) return;
  $("note-line").value = String(Number(row.dataset.line) + 1);
  $("note-text").focus();
});

// ---------------------------------------------------------------------------
// Comments and annotations.

const fresh = new WeakSet();
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });

// Any timestamp the server accepted must render: RFC 3339 allows a leap second
// (…T23:59:60Z), which Date cannot parse; it is shown as :59. Anything else Date
// cannot read is shown as sent.
function formatTime(timestamp) {
  let date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) date = new Date(String(timestamp).replace(/(T\d\d:\d\d):60/i, "$1:59"));
  return Number.isNaN(date.getTime()) ? String(timestamp) : timeFormat.format(date);
}

function renderNotes() {
  const notes = [...(doc?.notes ?? [])].sort(
    (a, b) => a.position.line - b.position.line || a.position.column - b.position.column,
  );
  const items = notes.map((note) => {
    const p = person(note.user_id);
    const item = el("li", "note");
    if (fresh.has(note)) {
      item.classList.add("fresh");
      fresh.delete(note);
    }
    item.dataset.kind = note.type;
    item.dataset.user = note.user_id;
    item.dataset.line = String(note.position.line);
    item.style.setProperty("--c", p.colour);
    const head = el("div", "note-head");
    const chip = el("button", "line-chip", `L${note.position.line + 1}`);
    chip.type = "button";
    chip.title = "Jump to the line";
    chip.addEventListener("click", () => jumpTo(note.position.line));
    const when = el("time", "", formatTime(note.timestamp));
    when.dateTime = note.timestamp;
    const author = el("span", "note-author", p.name);
    if (note.user_id === userId) author.append(el("span", "you", "you"));
    head.append(avatar(note.user_id, true), author, el("span", "note-kind", note.type), chip, when);
    item.append(head, el("p", "", note.content));
    return item;
  });
  $("notes").replaceChildren(...items);
  $("notes-count").textContent = String(items.length);
  $("notes-empty").hidden = items.length > 0;
  renderGutter();
}

function jumpTo(line) {
  const offset = toOffset({ line, column: 0 });
  text.focus();
  text.setSelectionRange(offset, offset);
  const top = line * lineHeight;
  if (top < text.scrollTop || top > text.scrollTop + text.clientHeight - 2 * lineHeight) {
    text.scrollTop = Math.max(0, top - text.clientHeight / 3);
  }
  const band = el("div", "line-band flash");
  band.style.top = `${line * lineHeight}px`;
  under.append(band);
  setTimeout(() => band.remove(), 1500);
  syncCaret();
  scheduleRender();
}

$("note-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const error = $("note-error");
  error.textContent = "";
  const content = $("note-text").value.trim();
  const line = Math.max(1, Math.floor(Number($("note-line").value) || 1)) - 1;
  if (!content) {
    error.textContent = "Write something first.";
    return;
  }
  if (!doc) {
    error.textContent = "Not connected yet.";
    return;
  }
  const kind = new FormData(event.target).get("kind");
  try {
    if (kind === "Annotation") doc.annotate({ line, column: 0 }, content);
    else doc.comment({ line, column: 0 }, content);
  } catch (err) {
    error.textContent = err.message;
    return;
  }
  $("note-text").value = "";
});

$("note-text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) $("note-form").requestSubmit();
});

for (const input of document.querySelectorAll('input[name="kind"]')) {
  input.addEventListener("change", () => {
    $("note-text").placeholder = input.value === "Annotation" ? "Write an annotation…" : "Write a comment…";
  });
}

// ---------------------------------------------------------------------------
// Document picker.

const docInput = $("doc-id");
docInput.value = documentId;
function openDocument(id) {
  const next = new URLSearchParams(params);
  next.set("doc", id);
  next.delete("user");
  location.search = `?${next}`;
}
$("open-doc").addEventListener("click", () => {
  const id = docInput.value.trim();
  if (UUID.test(id)) openDocument(id);
  else docInput.setCustomValidity("A document id is a UUID"), docInput.reportValidity();
});
docInput.addEventListener("input", () => docInput.setCustomValidity(""));
docInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter") $("open-doc").click();
});
$("new-doc").addEventListener("click", () => openDocument(crypto.randomUUID()));
$("copy-link").addEventListener("click", async () => {
  const link = new URL(location.href);
  link.searchParams.delete("user");
  link.searchParams.delete("token");
  const button = $("copy-link");
  try {
    await navigator.clipboard.writeText(link.toString());
    button.textContent = "Copied!";
  } catch {
    docInput.value = link.toString();
    docInput.select();
    button.textContent = "Copy it above";
  }
  button.classList.add("done");
  setTimeout(() => {
    button.textContent = "Copy link";
    button.classList.remove("done");
    docInput.value = documentId;
  }, 1800);
});

// Exposed for the browser tests and for poking around in the console.
window.cpcDemo = { client, get doc() { return doc; }, userId, documentId, person };

renderGutter();
render();
start();
