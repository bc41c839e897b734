/**
 * cpc-signaling JavaScript client: live cursors, selections, typing, status,
 * comments and annotations for collaborative apps, over the CPC signaling
 * protocol (one JSON object per WebSocket text frame).
 *
 * An ES module with no dependencies and no build step. Runs in browsers and in
 * Node.js with a global WebSocket (Node >= 22, or Node 20 with
 * --experimental-websocket), or with any WHATWG-compatible constructor passed
 * as the `WebSocket` option.
 *
 *   import { CpcClient } from "/client.js";
 *   const client = new CpcClient("ws://127.0.0.1:8765/ws", { token });
 *   const doc = await client.join(documentId);    // resolves at the own-join ack
 *   doc.on("presence", (user) => render(user));   // doc.users: Map of who is here
 *   doc.cursor({ line: 3, column: 7 });           // throttled, latest wins
 *
 * The canonical copy of this file is src/cpc_signaling/static/client.js (it
 * ships in the Python wheel and the server serves it at /client.js);
 * clients/js/client.js is a byte-identical copy for npm, checked by a test.
 */

export const VERSION = "0.1.0";

/** The ten message types of the protocol, in the order of the seed document. */
export const MESSAGE_TYPES = Object.freeze([
  "JoinDocument",
  "LeaveDocument",
  "PresenceUpdate",
  "CursorUpdate",
  "SelectionUpdate",
  "TypingIndicator",
  "Error",
  "Annotation",
  "Comment",
  "PresenceStatus",
]);

const PRESENCE_TYPES = new Set([
  "PresenceUpdate",
  "CursorUpdate",
  "SelectionUpdate",
  "TypingIndicator",
  "PresenceStatus",
]);
const NOTE_TYPES = new Set(["Annotation", "Comment"]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const UUID_IN = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;
// WebSocket close codes after which reconnecting cannot help (policy violation
// after AUTH_ERROR with a token that will not change, message too big).
const NO_RETRY_CODES = new Set([1008, 1009]);

// The subprotocol the client speaks; a token rides along as "cpc.token.<JWT>".
export const SUBPROTOCOL = "cpc.v1";
const TOKEN_PROTOCOL_PREFIX = "cpc.token.";
// A user's info, JSON-encoded, may take at most this many bytes (the server's bound).
const MAX_INFO_BYTES = 1024;
// A note the server has not refused within this long is taken as accepted.
const NOTE_REFUSAL_WINDOW_MS = 10_000;
// How the server's Error says it is about a note: it names the type ("Comment.content:
// ...") or the kind ("... annotations and comments ...": rate limit, storage full).
const NOTE_TYPE_NAMED = /\b(Annotation|Comment)\b/;
const NOTES_NAMED = /\bannotations and comments\b/i;

const DEFAULTS = Object.freeze({
  tokenIn: "protocol",
  throttleMs: 50,
  reconnect: true,
  backoffInitialMs: 250,
  backoffMaxMs: 10_000,
  maxNotes: 1000,
});

/** The client cannot do what was asked (not connected, closed). */
export class ClientError extends Error {
  constructor(message) {
    super(message);
    this.name = "ClientError";
  }
}

/** The server refused a join; `error` is its Error message. */
export class JoinError extends ClientError {
  constructor(error) {
    super(`${error.code}: ${error.message}`);
    this.name = "JoinError";
    this.code = error.code;
    this.error = error;
  }
}

/** The current time as an RFC 3339 timestamp (UTC, milliseconds). */
export function timestamp() {
  return new Date().toISOString();
}

/** `ws(s)://<this page's host>/ws` in a browser; undefined elsewhere. */
export function defaultUrl() {
  const location = globalThis.location;
  if (!location || !/^https?:$/.test(location.protocol)) return undefined;
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

/** The `sub` claim of a JWT, without verifying it (the server does). */
export function tokenSubject(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    const sub = JSON.parse(atob(padded)).sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

/** Parse one frame into `{ type, ...fields }`, or undefined if it is not a message. */
export function decode(text) {
  let outer;
  try {
    outer = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!outer || typeof outer !== "object" || Array.isArray(outer)) return undefined;
  const keys = Object.keys(outer);
  if (keys.length !== 1 || !MESSAGE_TYPES.includes(keys[0])) return undefined;
  const body = outer[keys[0]];
  if (!body || typeof body !== "object") return undefined;
  return { type: keys[0], ...body };
}

/** Encode `{ type, ...fields }` as the externally tagged frame `{"Type": {...}}`. */
export function encode(message) {
  const { type, ...body } = message;
  return JSON.stringify({ [type]: body });
}

function position(value, name) {
  if (!value || !Number.isInteger(value.line) || !Number.isInteger(value.column)) {
    throw new TypeError(`${name} must be {line, column} with integer fields`);
  }
  return { line: value.line, column: value.column };
}

function selection(start, end) {
  return { start: position(start, "selection start"), end: position(end, "selection end") };
}

function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

/** A small event emitter; `on` returns a function that removes the listener. */
class Emitter {
  #listeners = new Map();

  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  once(type, listener) {
    const off = this.on(type, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  emit(type, ...args) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        report(error); // one broken listener must not break the others or the client
      }
    }
  }
}

function emptyPresence(userId, info = null) {
  return {
    userId,
    info: info && typeof info === "object" && !Array.isArray(info) ? info : null,
    cursor: null,
    selection: null,
    isTyping: false,
    status: null,
    updatedAt: Date.now(),
    timestamp: null,
  };
}

// What a presence message changes in a user's entry. Returns a new object.
function applyPresence(entry, message) {
  const next = { ...entry, updatedAt: Date.now(), timestamp: message.timestamp ?? null };
  switch (message.type) {
    case "PresenceUpdate":
      next.cursor = message.cursor;
      next.selection = message.selection;
      next.isTyping = message.is_typing;
      break;
    case "CursorUpdate":
      next.cursor = message.position;
      break;
    case "SelectionUpdate":
      next.selection = message.selection;
      break;
    case "TypingIndicator":
      next.isTyping = message.is_typing;
      break;
    case "PresenceStatus":
      next.status = message.status;
      break;
  }
  return next;
}

/**
 * One joined document: who is here (`users`), the comments and annotations
 * (`notes`), and senders bound to the document. Get one from `client.join()`.
 *
 * Events (`doc.on(type, listener)`):
 *   "sync"     (snapshot)         a snapshot was applied (first join, every re-join)
 *   "join"     (presence)         a user arrived
 *   "leave"    (userId, presence) a user left (their last connection)
 *   "presence" (presence, message) a user's cursor/selection/typing/status changed
 *   "note"     (message)          an Annotation or Comment arrived (or was sent from here)
 *   "message"  (message)          every live message of this document
 *   "connection" (connected)      the client lost (false) or regained (true) this document
 *   "refused"  (joinError)        a re-join after a reconnect was refused: the session is over
 *   "noteRefused" (note, error)   the server refused one of our notes: it left `notes`
 */
export class DocumentSession extends Emitter {
  #client;
  #pending = { CursorUpdate: null, SelectionUpdate: null, PresenceUpdate: null };
  #timers = { CursorUpdate: null, SelectionUpdate: null, PresenceUpdate: null };
  #lastSent = { CursorUpdate: -Infinity, SelectionUpdate: -Infinity, PresenceUpdate: -Infinity };
  // This client's own presence in the document, re-sent after a re-join.
  #local = { cursor: null, selection: null, isTyping: false, status: null };

  constructor(client, documentId) {
    super();
    this.#client = client;
    /** The document id, lowercase. */
    this.id = documentId;
    /** Other users present, oldest join first: userId -> presence entry. */
    this.users = new Map();
    /** Annotations and comments, oldest first, our own included (at most `maxNotes`). */
    this.notes = [];
    /** The raw messages of the last snapshot, ending with the own-join ack. */
    this.snapshot = [];
    /** True between the own-join ack and a disconnect or leave. */
    this.joined = false;
    this.buffer = null; // snapshot being received, or null
  }

  /** The user id this client speaks as. */
  get userId() {
    return this.#client.userId;
  }

  // -- senders ----------------------------------------------------------------

  /** Move this user's cursor. Throttled (latest wins): see the `throttleMs` option. */
  cursor(pos) {
    const value = position(pos, "cursor");
    this.#local.cursor = value;
    const merged = this.#pending.PresenceUpdate;
    if (merged) {
      merged.cursor = value; // the pending PresenceUpdate will carry it
      return true;
    }
    return this.#throttled("CursorUpdate", { position: value });
  }

  /** Set this user's selection (start === end clears it). Throttled like `cursor`. */
  select(start, end) {
    const value = selection(start, end);
    this.#local.selection = value;
    const merged = this.#pending.PresenceUpdate;
    if (merged) {
      merged.selection = value;
      return true;
    }
    return this.#throttled("SelectionUpdate", { selection: value });
  }

  /** Cursor, selection and typing at once. Throttled; supersedes pending cursor/selection. */
  presence({ cursor, selection: sel, isTyping }) {
    const body = {
      cursor: position(cursor, "cursor"),
      selection: selection(sel.start, sel.end),
      is_typing: Boolean(isTyping),
    };
    Object.assign(this.#local, {
      cursor: body.cursor,
      selection: body.selection,
      isTyping: body.is_typing,
    });
    this.#pending.CursorUpdate = null;
    this.#pending.SelectionUpdate = null;
    return this.#throttled("PresenceUpdate", body);
  }

  /** Tell the others whether this user is typing. Sent at once. */
  typing(isTyping = true) {
    this.#local.isTyping = Boolean(isTyping);
    const pending = this.#pending.PresenceUpdate;
    if (pending) pending.is_typing = Boolean(isTyping); // or it would undo this one
    return this.#send("TypingIndicator", { is_typing: Boolean(isTyping) });
  }

  /** Set this user's status ("online", "away", "busy", or any 1-64 character string). */
  status(status) {
    const length = typeof status === "string" ? [...status].length : 0; // code points, as the server counts
    if (length < 1 || length > 64) {
      throw new TypeError("status must be a string of 1 to 64 characters");
    }
    this.#local.status = status;
    return this.#send("PresenceStatus", { status });
  }

  /** Add an annotation anchored at `pos`. Throws ClientError when not connected. */
  annotate(pos, content) {
    return this.#note("Annotation", pos, content);
  }

  /** Add a comment anchored at `pos`. Throws ClientError when not connected. */
  comment(pos, content) {
    return this.#note("Comment", pos, content);
  }

  /** Leave the document; resolves when the server acknowledged it. */
  leave() {
    return this.#client.leave(this.id);
  }

  /** Send pending throttled updates now. */
  flush() {
    for (const type of Object.keys(this.#pending)) this.#flush(type);
  }

  #note(type, pos, content) {
    if (typeof content !== "string" || content.length === 0) {
      throw new TypeError("content must be a non-empty string");
    }
    if (!this.#client.connected) throw new ClientError("not connected");
    if (!this.#current()) throw new ClientError(`not joined to ${this.id}`);
    const message = {
      type,
      document_id: this.id,
      user_id: this.#client.userId,
      position: position(pos, "position"),
      content,
      timestamp: timestamp(),
    };
    this.#client.sendMessage(message);
    // The server never echoes a message to its sender: keep our own note here too,
    // so `notes` is the document's whole list (a re-join's snapshot has it as well).
    // Until the server could have refused it, it is pending (see `noteRefused`).
    this.#addNote(message);
    this.#client.notePending(this, message);
    return true;
  }

  /** @internal The server refused `note` (sent from here): take it back out of `notes`. */
  withdraw(note, error) {
    const index = this.notes.indexOf(note);
    if (index === -1) return;
    this.notes.splice(index, 1);
    this.emit("noteRefused", note, error);
  }

  #addNote(message) {
    this.notes.push(message);
    if (this.notes.length > this.#client.options.maxNotes) this.notes.shift();
    this.emit("note", message);
  }

  // False once this session was left (or refused): a left document's sends are dropped.
  #current() {
    return this.#client.document(this.id) === this;
  }

  #send(type, body) {
    if (!this.#current()) return false;
    return this.#client.sendMessage({
      type,
      document_id: this.id,
      user_id: this.#client.userId,
      ...body,
      timestamp: timestamp(),
    });
  }

  // Leading edge at once, then at most one message per throttleMs per type,
  // carrying the latest value (intermediate values are dropped, never queued).
  #throttled(type, body) {
    const interval = this.#client.options.throttleMs;
    if (!(interval > 0)) return this.#send(type, body);
    const now = performance.now();
    const due = this.#lastSent[type] + interval;
    if (this.#pending[type] === null && now >= due && this.#timers[type] === null) {
      this.#lastSent[type] = now;
      return this.#send(type, body);
    }
    this.#pending[type] = body;
    if (this.#timers[type] === null) {
      this.#timers[type] = setTimeout(() => this.#flush(type), Math.max(0, due - now));
    }
    return true;
  }

  #flush(type) {
    if (this.#timers[type] !== null) {
      clearTimeout(this.#timers[type]);
      this.#timers[type] = null;
    }
    const body = this.#pending[type];
    this.#pending[type] = null;
    if (body !== null) {
      this.#lastSent[type] = performance.now();
      this.#send(type, body);
    }
  }

  // -- called by the client ------------------------------------------------------

  /** @internal Cancel pending sends (leave, close). */
  cancel() {
    for (const type of Object.keys(this.#pending)) {
      this.#pending[type] = null;
      if (this.#timers[type] !== null) clearTimeout(this.#timers[type]);
      this.#timers[type] = null;
    }
  }

  /** @internal The connection dropped: the presence map is stale until the re-join. */
  disconnected() {
    this.cancel();
    if (this.joined) {
      this.joined = false;
      this.emit("connection", false);
    }
  }

  /** @internal The own-join ack arrived: rebuild everything from the snapshot. */
  applySnapshot(messages) {
    const users = new Map();
    const notes = [];
    const self = this.#client.userId;
    for (const message of messages) {
      const user = message.user_id;
      if (message.type === "JoinDocument") {
        if (user !== self && !users.has(user)) users.set(user, emptyPresence(user, message.info));
      } else if (PRESENCE_TYPES.has(message.type)) {
        if (user !== self) users.set(user, applyPresence(users.get(user) ?? emptyPresence(user), message));
      } else if (NOTE_TYPES.has(message.type)) {
        notes.push(message);
      }
    }
    const before = this.users;
    const wasJoined = this.joined;
    this.users = users;
    this.notes = notes.slice(-this.#client.options.maxNotes);
    this.snapshot = messages;
    this.joined = true;
    // Tell listeners what changed relative to what they had (a re-join).
    for (const [userId, entry] of before) {
      if (!users.has(userId)) this.emit("leave", userId, entry);
    }
    for (const [userId, entry] of users) {
      if (!before.has(userId)) this.emit("join", entry);
    }
    this.emit("sync", messages);
    if (!wasJoined) this.emit("connection", true);
    this.#resendLocal();
  }

  // After a re-join the server no longer holds our presence: send it again.
  #resendLocal() {
    const local = this.#local;
    if (local.status !== null) this.#send("PresenceStatus", { status: local.status });
    if (local.cursor !== null && local.selection !== null) {
      this.#send("PresenceUpdate", {
        cursor: local.cursor,
        selection: local.selection,
        is_typing: local.isTyping,
      });
    } else {
      if (local.cursor !== null) this.#send("CursorUpdate", { position: local.cursor });
      if (local.selection !== null) this.#send("SelectionUpdate", { selection: local.selection });
      if (local.isTyping) this.#send("TypingIndicator", { is_typing: true });
    }
  }

  /** @internal A live message of this document. */
  apply(message) {
    const user = message.user_id;
    const self = this.#client.userId;
    if (message.type === "JoinDocument") {
      if (user !== self && !this.users.has(user)) {
        const entry = emptyPresence(user, message.info);
        this.users.set(user, entry);
        this.emit("join", entry);
      }
    } else if (message.type === "LeaveDocument") {
      const entry = this.users.get(user);
      if (entry !== undefined) {
        this.users.delete(user);
        this.emit("leave", user, entry);
      }
    } else if (PRESENCE_TYPES.has(message.type)) {
      // The same user's other tabs are not in the map: no leave would tell us when they go.
      if (user !== self) {
        const before = this.users.get(user);
        const entry = applyPresence(before ?? emptyPresence(user), message);
        this.users.set(user, entry);
        if (before === undefined) this.emit("join", entry);
        this.emit("presence", entry, message);
      }
    } else if (NOTE_TYPES.has(message.type)) {
      this.#addNote(message);
    }
    this.emit("message", message);
  }
}

/**
 * One WebSocket to a cpc-signaling server, for one user.
 *
 *   new CpcClient(url?, { userId?, token?, throttleMs?, reconnect?, ... })
 *
 * Events (`client.on(type, listener)`): every message type by name
 * ("CursorUpdate", "Error", ...) with the decoded message, for live messages
 * (not those inside a join snapshot, which `doc.snapshot` holds); "message" for
 * all of them; "open" (); "close" ({code, reason, willReconnect});
 * "reconnecting" ({attempt, delayMs}); "reconnected" ({attempt}); "state" (state).
 */
export class CpcClient extends Emitter {
  #ws = null;
  #userId;
  #documents = new Map(); // documentId -> DocumentSession, joined or joining
  #joins = new Map(); // documentId -> {resolve, reject} of a join() call not yet acknowledged
  #leaves = new Map(); // documentId -> [resolve] waiting for the leave ack
  #state = "idle";
  #attempt = 0;
  #retryTimer = null;
  #opened = null; // {promise, resolve, reject} of the current connect()
  #authFailed = false;
  #lastError = null; // the last Error the server sent on this connection
  #pendingNotes = []; // [{doc, note, at}] our notes the server may still refuse, oldest first
  #info = null; // the JoinDocument `info` object, as given

  constructor(url, options = {}) {
    super();
    if (url && typeof url === "object") [url, options] = [undefined, url];
    /** Options in force (defaults filled in). */
    this.options = { ...DEFAULTS, ...options };
    const resolved = url ?? defaultUrl();
    if (!resolved) throw new TypeError("a WebSocket URL is needed outside a browser page");
    /** The server's WebSocket URL (without the token). */
    this.url = resolved;
    const token = this.options.token;
    const userId =
      this.options.userId ??
      (typeof token === "string" ? tokenSubject(token) : undefined) ??
      globalThis.crypto.randomUUID();
    if (!UUID.test(userId)) throw new TypeError(`userId must be a UUID, got ${userId}`);
    this.#userId = userId.toLowerCase();
    if (this.options.info != null) {
      const info = this.options.info;
      if (typeof info !== "object" || Array.isArray(info)) {
        throw new TypeError("info must be a plain object (a JSON object)");
      }
      if (new TextEncoder().encode(JSON.stringify(info)).length > MAX_INFO_BYTES) {
        throw new TypeError(`info must be at most ${MAX_INFO_BYTES} bytes as JSON`);
      }
      this.#info = info;
    }
    if (this.options.tokenIn !== "protocol" && this.options.tokenIn !== "query") {
      throw new TypeError('tokenIn must be "protocol" or "query"');
    }
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError(
        "no WebSocket implementation: pass the `WebSocket` option (Node < 22: --experimental-websocket)",
      );
    }
  }

  /** The user id this client speaks as (lowercase). */
  get userId() {
    return this.#userId;
  }

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** True while the WebSocket is open. */
  get connected() {
    return this.#state === "open";
  }

  /** Documents joined or being joined, by id. */
  get documents() {
    return this.#documents;
  }

  /** The session of a joined document, if any. */
  document(documentId) {
    return this.#documents.get(String(documentId).toLowerCase());
  }

  // -- connection -------------------------------------------------------------------

  /** Open the WebSocket; resolves when it is open. Called by `join` if needed. */
  connect() {
    if (this.#state === "closed") return Promise.reject(new ClientError("client closed"));
    if (this.#state === "open") return Promise.resolve(this);
    if (this.#opened === null) {
      let resolve, reject;
      const promise = new Promise((res, rej) => ((resolve = res), (reject = rej)));
      promise.catch(() => {}); // a caller that never awaits connect() must not see an unhandled rejection
      this.#opened = { promise, resolve, reject };
      if (this.#state === "idle") this.#open();
    }
    return this.#opened.promise;
  }

  async #open() {
    this.#setState(this.#attempt === 0 ? "connecting" : "reconnecting");
    let token = this.options.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (error) {
      this.#onClose({ code: 1006, reason: `token provider failed: ${error}` });
      return;
    }
    if (this.#state === "closed") return;
    const url = new URL(this.url, globalThis.location?.href);
    // The token rides in the Sec-WebSocket-Protocol header, out of URLs and so out of
    // access logs and browser history; the server selects "cpc.v1" and never echoes it.
    // Without a token nothing is offered: a browser fails a handshake whose offered
    // subprotocols the server does not answer, so any server version accepts this one.
    const protocols = [];
    if (token && this.options.tokenIn === "query") url.searchParams.set("token", token);
    else if (token) protocols.push(SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX + token);
    let ws;
    try {
      ws = protocols.length
        ? new this.WebSocket(url.toString(), protocols)
        : new this.WebSocket(url.toString());
    } catch (error) {
      this.#onClose({ code: 1006, reason: String(error) });
      return;
    }
    this.#ws = ws;
    this.#authFailed = false;
    this.#lastError = null;
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#onFrame(event.data);
    };
    let ended = false;
    const end = (event) => {
      if (ended) return;
      ended = true;
      if (ws === this.#ws) this.#onClose(event);
    };
    ws.onclose = end;
    // Browsers follow an error with a close event; some implementations (Node 20's)
    // do not when the connection was refused, so a failed handshake ends it here.
    ws.onerror = () => {
      setTimeout(() => {
        if (ws.readyState !== 1) end({ code: 1006, reason: "connection failed" });
      }, 0);
    };
  }

  #onOpen(ws) {
    if (ws !== this.#ws) return;
    const reconnect = this.#attempt > 0;
    const attempt = this.#attempt;
    this.#setState("open");
    if (this.#documents.size === 0) this.#attempt = 0;
    this.emit("open");
    if (reconnect) this.emit("reconnected", { attempt });
    this.#opened?.resolve(this);
    this.#opened = null;
    for (const doc of this.#documents.values()) this.#sendJoin(doc);
  }

  #onClose(event) {
    this.#ws = null;
    const code = event.code ?? 1006;
    const reason = event.reason ?? "";
    for (const doc of this.#documents.values()) doc.disconnected();
    for (const [, waiters] of this.#leaves) for (const resolve of waiters) resolve();
    this.#leaves.clear();
    if (this.#state === "closed") return;
    const staticToken = typeof this.options.token !== "function";
    const hopeless = NO_RETRY_CODES.has(code) && (staticToken || !this.#authFailed);
    const willReconnect = Boolean(this.options.reconnect) && !hopeless;
    this.emit("close", { code, reason, willReconnect });
    if (!willReconnect) {
      const error = this.#lastError;
      this.#shutdown(
        error !== null
          ? new JoinError(error)
          : new ClientError(`connection closed (${code}${reason ? `: ${reason}` : ""})`),
      );
      return;
    }
    // Full jitter: a crowd of clients whose server restarted does not come back at once.
    const ceiling = Math.min(
      this.options.backoffMaxMs,
      this.options.backoffInitialMs * 2 ** this.#attempt,
    );
    const delayMs = Math.round(Math.random() * ceiling);
    this.#attempt += 1;
    this.#setState("reconnecting");
    this.emit("reconnecting", { attempt: this.#attempt, delayMs, code });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#open();
    }, delayMs);
  }

  /** Close for good: no reconnect. Pending joins reject with ClientError. */
  close() {
    if (this.#state === "closed") return;
    const ws = this.#ws;
    this.#shutdown(new ClientError("client closed"));
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    this.emit("close", { code: 1000, reason: "client closed", willReconnect: false });
  }

  #shutdown(error) {
    this.#setState("closed");
    this.#ws = null;
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    for (const doc of this.#documents.values()) doc.cancel();
    for (const [, join] of this.#joins) join.reject(error);
    this.#joins.clear();
    for (const [, waiters] of this.#leaves) for (const resolve of waiters) resolve();
    this.#leaves.clear();
    this.#opened?.reject(error);
    this.#opened = null;
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", state);
  }

  // -- documents --------------------------------------------------------------------

  /**
   * Join a document. Resolves with its DocumentSession when the server's
   * acknowledgement (the echo of the join) arrives, the snapshot applied: who is
   * here with their presence, and the stored comments and annotations.
   * Rejects with JoinError when the server refuses.
   */
  join(documentId) {
    const id = String(documentId).toLowerCase();
    if (!UUID.test(id)) return Promise.reject(new TypeError(`document id must be a UUID, got ${documentId}`));
    if (this.#state === "closed") return Promise.reject(new ClientError("client closed"));
    let doc = this.#documents.get(id);
    const fresh = doc === undefined;
    if (fresh) {
      doc = new DocumentSession(this, id);
      this.#documents.set(id, doc);
    }
    const previous = this.#joins.get(id);
    const promise = new Promise((resolve, reject) => {
      this.#joins.set(id, {
        resolve: (value) => {
          previous?.resolve(value);
          resolve(value);
        },
        reject: (error) => {
          previous?.reject(error);
          reject(error);
        },
      });
    });
    if (this.#state === "open") this.#sendJoin(doc);
    else this.connect().catch(() => {}); // the join is sent at open; failures reject via #joins
    return promise;
  }

  #sendJoin(doc) {
    doc.buffer = [];
    const join = { type: "JoinDocument", document_id: doc.id, user_id: this.#userId };
    if (this.#info !== null) join.info = this.#info;
    this.sendMessage(join);
  }

  /** Leave a document; resolves when the server acknowledged it (at once when offline). */
  leave(documentId) {
    const id = String(documentId).toLowerCase();
    const doc = this.#documents.get(id);
    if (doc !== undefined) {
      doc.cancel();
      doc.joined = false;
      this.#documents.delete(id);
    }
    this.#joins.get(id)?.reject(new ClientError(`left ${id} before the join completed`));
    this.#joins.delete(id);
    if (!this.connected) return Promise.resolve();
    return new Promise((resolve) => {
      const waiters = this.#leaves.get(id) ?? [];
      waiters.push(resolve);
      this.#leaves.set(id, waiters);
      this.sendMessage({ type: "LeaveDocument", document_id: id, user_id: this.#userId });
    });
  }

  // -- typed senders (not throttled; DocumentSession's cursor/select/presence are) ----

  /** Send `{type, ...fields}` as one frame; false when not connected (the message is dropped). */
  sendMessage(message) {
    if (this.#state !== "open" || this.#ws === null) return false;
    this.#ws.send(encode(message));
    return true;
  }

  /** Send a raw frame as it is (for tools and tests). */
  sendRaw(data) {
    if (this.#state !== "open" || this.#ws === null) return false;
    this.#ws.send(data);
    return true;
  }

  #base(type, documentId) {
    return { type, document_id: String(documentId).toLowerCase(), user_id: this.#userId };
  }

  sendPresenceUpdate(documentId, { cursor, selection: sel, isTyping }) {
    return this.sendMessage({
      ...this.#base("PresenceUpdate", documentId),
      cursor: position(cursor, "cursor"),
      selection: selection(sel.start, sel.end),
      is_typing: Boolean(isTyping),
      timestamp: timestamp(),
    });
  }

  sendCursorUpdate(documentId, pos) {
    return this.sendMessage({
      ...this.#base("CursorUpdate", documentId),
      position: position(pos, "position"),
      timestamp: timestamp(),
    });
  }

  sendSelectionUpdate(documentId, start, end) {
    return this.sendMessage({
      ...this.#base("SelectionUpdate", documentId),
      selection: selection(start, end),
      timestamp: timestamp(),
    });
  }

  sendTypingIndicator(documentId, isTyping = true) {
    return this.sendMessage({
      ...this.#base("TypingIndicator", documentId),
      is_typing: Boolean(isTyping),
      timestamp: timestamp(),
    });
  }

  sendPresenceStatus(documentId, status) {
    return this.sendMessage({ ...this.#base("PresenceStatus", documentId), status, timestamp: timestamp() });
  }

  sendAnnotation(documentId, pos, content) {
    return this.sendMessage({
      ...this.#base("Annotation", documentId),
      position: position(pos, "position"),
      content,
      timestamp: timestamp(),
    });
  }

  sendComment(documentId, pos, content) {
    return this.sendMessage({
      ...this.#base("Comment", documentId),
      position: position(pos, "position"),
      content,
      timestamp: timestamp(),
    });
  }

  // -- incoming ---------------------------------------------------------------------

  #onFrame(data) {
    if (typeof data !== "string") return; // the server sends text frames only
    const message = decode(data);
    if (message === undefined) {
      report(new ClientError(`undecodable frame from the server: ${data.slice(0, 200)}`));
      return;
    }
    if (message.type === "Error") {
      this.#onError(message);
      return;
    }
    const doc = this.#documents.get(message.document_id);
    if (doc !== undefined && doc.buffer !== null) {
      // Inside a join snapshot, which ends with the own-join ack.
      if (message.type === "JoinDocument" && message.user_id === this.#userId) {
        const snapshot = [...doc.buffer, message];
        doc.buffer = null;
        this.#attempt = 0; // the connection works: the next drop starts the backoff again
        doc.applySnapshot(snapshot);
        const join = this.#joins.get(doc.id);
        this.#joins.delete(doc.id);
        join?.resolve(doc);
      } else {
        doc.buffer.push(message);
      }
      return;
    }
    if (message.type === "LeaveDocument" && message.user_id === this.#userId) {
      const waiters = this.#leaves.get(message.document_id);
      if (waiters !== undefined) {
        this.#leaves.delete(message.document_id);
        for (const resolve of waiters) resolve();
      }
    }
    doc?.apply(message);
    this.emit(message.type, message);
    this.emit("message", message);
  }

  /** @internal A note was sent from `doc`: the server may still refuse it. */
  notePending(doc, note) {
    this.#prunePendingNotes();
    this.#pendingNotes.push({ doc, note, at: Date.now() });
  }

  #prunePendingNotes() {
    const oldest = Date.now() - NOTE_REFUSAL_WINDOW_MS;
    while (this.#pendingNotes.length > 0 && this.#pendingNotes[0].at < oldest) this.#pendingNotes.shift();
  }

  // The server refuses a note with an Error naming its type or "annotations and comments"
  // (and its document, when the reason is the document's). Nothing is acknowledged, so
  // which note it was is inferred: the one whose timestamp the message quotes, if any;
  // for content over the length limit, the oldest pending note that long (frames are
  // answered in order); for a refusal by condition (rate limit, storage full, overload),
  // which holds for every later note too, the newest pending one. A note not refused
  // within the window is taken as accepted.
  #noteRefusal(error) {
    const text = String(error.message ?? "");
    const named = NOTE_TYPE_NAMED.exec(text);
    if ((named === null && !NOTES_NAMED.test(text)) || error.code === "AUTH_ERROR") return;
    this.#prunePendingNotes();
    const candidates = this.#pendingNotes.filter(
      ({ doc, note }) =>
        (named === null || note.type === named[1]) && (!UUID_IN.test(text) || text.includes(doc.id)),
    );
    const limit = /longer than (\d+) characters/.exec(text);
    const chosen =
      candidates.find(({ note }) => text.includes(note.timestamp)) ??
      (limit !== null
        ? candidates.find(({ note }) => [...note.content].length > Number(limit[1]))
        : candidates.at(-1));
    const index = this.#pendingNotes.indexOf(chosen);
    if (index === -1) return;
    const [{ doc, note }] = this.#pendingNotes.splice(index, 1);
    doc.withdraw(note, error);
  }

  #onError(error) {
    if (error.code === "AUTH_ERROR") this.#authFailed = true;
    this.#lastError = error;
    this.#noteRefusal(error);
    // A refused join (document full, too many documents, not in the token's `docs`)
    // is an AUTH_ERROR or DOCUMENT_ERROR naming its document.
    const refusal = error.code === "AUTH_ERROR" || error.code === "DOCUMENT_ERROR";
    for (const [id, doc] of refusal ? this.#documents : []) {
      if (doc.buffer !== null && error.message.includes(id)) {
        doc.buffer = null;
        this.#documents.delete(id);
        doc.disconnected();
        const join = this.#joins.get(id);
        this.#joins.delete(id);
        // A join() call gets the rejection; a re-join after a reconnect tells the session.
        if (join !== undefined) join.reject(new JoinError(error));
        else doc.emit("refused", new JoinError(error));
        break;
      }
    }
    this.emit("Error", error);
    this.emit("message", error);
  }
}

export default CpcClient;
