// Unit tests of the JavaScript client against a real cpc-signaling server (a subprocess).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { ClientError, CpcClient, JoinError, MESSAGE_TYPES, decode, encode, tokenSubject } from "../client.js";
import { createServer } from "node:http";

import { collect, hs256, newId, startServer, until, waitFor } from "./helpers.js";

if (typeof globalThis.WebSocket !== "function") {
  throw new Error(
    "these tests need a global WebSocket: Node >= 22, or Node 20 with --experimental-websocket",
  );
}

const clients = [];
function client(url, options = {}) {
  const c = new CpcClient(url, { backoffInitialMs: 20, backoffMaxMs: 200, ...options });
  clients.push(c);
  return c;
}
function closeAll() {
  for (const c of clients.splice(0)) c.close();
}

const at = (line, column) => ({ line, column });

describe("codec", () => {
  test("encode and decode are externally tagged, one key", () => {
    const message = { type: "CursorUpdate", document_id: "d", user_id: "u", position: at(1, 2), timestamp: "t" };
    const frame = encode(message);
    assert.deepEqual(JSON.parse(frame), {
      CursorUpdate: { document_id: "d", user_id: "u", position: at(1, 2), timestamp: "t" },
    });
    assert.deepEqual(decode(frame), message);
    assert.equal(decode("not json"), undefined);
    assert.equal(decode('{"Nope": {}}'), undefined);
    assert.equal(decode('{"Error": {}, "Comment": {}}'), undefined);
    assert.equal(MESSAGE_TYPES.length, 10);
  });

  test("tokenSubject reads the sub claim", () => {
    const sub = newId();
    assert.equal(tokenSubject(hs256({ sub, exp: 1 }, "x".repeat(32))), sub);
    assert.equal(tokenSubject("garbage"), undefined);
  });
});

describe("against a real server", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    closeAll();
    await server?.stop();
  });

  test("join resolves at the own-join ack with the snapshot: presence and notes", async () => {
    const doc = newId();
    const bob = client(server.url);
    const watcher = client(server.url);
    const bobDoc = await bob.join(doc);
    const watchDoc = await watcher.join(doc);
    bobDoc.status("away");
    bobDoc.select(at(1, 0), at(1, 4));
    bobDoc.cursor(at(1, 4));
    bobDoc.typing(true);
    bobDoc.comment(at(2, 0), "looks good");
    // Once the watcher saw the comment, the server has applied all of Bob's messages.
    await waitFor(watchDoc, "note", (m) => m.content === "looks good");

    const alice = client(server.url);
    const aliceDoc = await alice.join(doc);
    assert.equal(aliceDoc.joined, true);
    const last = aliceDoc.snapshot.at(-1);
    assert.deepEqual(
      { type: last.type, user_id: last.user_id },
      { type: "JoinDocument", user_id: alice.userId },
    );
    const seen = aliceDoc.users.get(bob.userId);
    assert.ok(seen, "Bob is in Alice's presence map");
    assert.deepEqual(seen.cursor, at(1, 4));
    assert.deepEqual(seen.selection, { start: at(1, 0), end: at(1, 4) });
    assert.equal(seen.isTyping, true);
    assert.equal(seen.status, "away");
    assert.ok(aliceDoc.users.has(watcher.userId));
    assert.ok(!aliceDoc.users.has(alice.userId), "own user is not in the map");
    assert.deepEqual(
      aliceDoc.notes.map((n) => [n.type, n.content, n.position.line]),
      [["Comment", "looks good", 2]],
    );
    assert.equal(alice.document(doc), aliceDoc);
  });

  test("an event for every incoming type, and the presence map follows", async () => {
    const doc = newId();
    const alice = client(server.url, { throttleMs: 0 });
    const bob = client(server.url, { throttleMs: 0 });
    const aliceDoc = await alice.join(doc);
    const seen = new Map(MESSAGE_TYPES.map((type) => [type, []]));
    for (const type of MESSAGE_TYPES) alice.on(type, (m) => seen.get(type).push(m));
    const all = collect(alice, "message");
    const presence = collect(aliceDoc, "presence");

    const joined = waitFor(aliceDoc, "join");
    const bobDoc = await bob.join(doc);
    assert.equal((await joined).userId, bob.userId);

    bobDoc.presence({ cursor: at(3, 1), selection: { start: at(3, 0), end: at(3, 1) }, isTyping: true });
    bobDoc.cursor(at(4, 2));
    bobDoc.select(at(4, 0), at(4, 2));
    bobDoc.typing(false);
    bobDoc.status("busy");
    bobDoc.annotate(at(5, 0), "TODO: rename");
    bobDoc.comment(at(6, 1), "why?");
    await waitFor(alice, "Comment");
    alice.sendRaw("this is not JSON");
    const error = await waitFor(alice, "Error");
    assert.equal(error.code, "PARSE_ERROR");
    const left = waitFor(aliceDoc, "leave");
    await bobDoc.leave();
    assert.equal((await left)[0], bob.userId);

    for (const type of MESSAGE_TYPES) {
      assert.ok(seen.get(type).length >= 1, `an event for ${type}`);
    }
    assert.equal(all.length, 10);
    assert.deepEqual(
      presence.map((p) => [p.cursor, p.selection?.end, p.isTyping, p.status]),
      [
        [at(3, 1), at(3, 1), true, null],
        [at(4, 2), at(3, 1), true, null],
        [at(4, 2), at(4, 2), true, null],
        [at(4, 2), at(4, 2), false, null],
        [at(4, 2), at(4, 2), false, "busy"],
      ],
    );
    assert.equal(aliceDoc.users.size, 0, "Bob is gone from the map");
    assert.deepEqual(
      aliceDoc.notes.map((n) => n.type),
      ["Annotation", "Comment"],
    );
    // The server relays what was sent, with the canonical ids and our timestamp.
    const cursor = seen.get("CursorUpdate")[0];
    assert.equal(cursor.document_id, doc);
    assert.match(cursor.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });

  test("cursor updates are throttled, latest wins; throttleMs 0 sends every one", async () => {
    const doc = newId();
    const watcher = client(server.url);
    const watchDoc = await watcher.join(doc);
    const fast = client(server.url, { throttleMs: 0 });
    const slow = client(server.url, { throttleMs: 60 });
    const fastDoc = await fast.join(doc);
    const slowDoc = await slow.join(doc);
    const cursors = collect(watcher, "CursorUpdate");

    for (let column = 0; column < 30; column++) slowDoc.cursor(at(0, column));
    for (let column = 0; column < 30; column++) fastDoc.cursor(at(1, column));
    await until(
      () => watchDoc.users.get(slow.userId)?.cursor?.column === 29,
      undefined,
      "the slow client's last cursor",
    );
    await until(() => watchDoc.users.get(fast.userId)?.cursor?.column === 29);
    const fromSlow = cursors.filter((m) => m.user_id === slow.userId).map((m) => m.position.column);
    const fromFast = cursors.filter((m) => m.user_id === fast.userId).map((m) => m.position.column);
    assert.deepEqual(fromSlow, [0, 29], "leading edge, then only the latest");
    assert.deepEqual(fromFast, [...Array(30).keys()]);

    // A pending cursor merges into a pending PresenceUpdate (which would otherwise overwrite it).
    const presence = collect(watcher, "PresenceUpdate");
    slowDoc.flush();
    await new Promise((resolve) => setTimeout(resolve, 70));
    slowDoc.presence({ cursor: at(7, 0), selection: { start: at(7, 0), end: at(7, 0) }, isTyping: false });
    slowDoc.presence({ cursor: at(8, 0), selection: { start: at(8, 0), end: at(8, 0) }, isTyping: false });
    slowDoc.cursor(at(8, 5));
    await until(() => watchDoc.users.get(slow.userId)?.cursor?.column === 5);
    assert.deepEqual(
      presence.map((m) => [m.cursor.line, m.cursor.column]),
      [
        [7, 0],
        [8, 5],
      ],
    );

    // typing(false) sent at once also corrects a pending PresenceUpdate that says typing.
    await new Promise((resolve) => setTimeout(resolve, 70));
    const here = { cursor: at(9, 0), selection: { start: at(9, 0), end: at(9, 0) } };
    slowDoc.presence({ ...here, isTyping: true });
    slowDoc.presence({ ...here, isTyping: true }); // pending
    slowDoc.typing(false);
    await until(() => presence.length === 4, undefined, "the pending PresenceUpdate");
    assert.equal(presence.at(-1).is_typing, false);
    assert.equal(watchDoc.users.get(slow.userId).isTyping, false);
  });

  test("a second tab of the same user gets the messages but is not in the map", async () => {
    const doc = newId();
    const user = newId();
    const tab1 = client(server.url, { userId: user, throttleMs: 0 });
    const tab2 = client(server.url, { userId: user.toUpperCase(), throttleMs: 0 });
    assert.equal(tab2.userId, user);
    const doc1 = await tab1.join(doc);
    const doc2 = await tab2.join(doc);
    doc2.cursor(at(2, 2));
    const message = await waitFor(tab1, "CursorUpdate");
    assert.equal(message.user_id, user);
    assert.equal(doc1.users.size, 0);
  });

  test("a refused join rejects with JoinError; the connection stays usable", async () => {
    const other = await startServer(["--max-documents-per-connection", "1"]);
    try {
      const c = client(other.url);
      await c.join(newId());
      const refused = newId();
      await assert.rejects(c.join(refused), (error) => {
        assert.ok(error instanceof JoinError);
        assert.equal(error.code, "DOCUMENT_ERROR");
        return true;
      });
      assert.equal(c.document(refused), undefined);
      assert.equal(c.connected, true);
    } finally {
      closeAll();
      await other.stop();
    }
  });

  test("doc.users carries each user's info, from the snapshot and live joins", async () => {
    const doc = newId();
    const ada = client(server.url, { info: { name: "Ada", color: "#e91e63" } });
    const bob = client(server.url);
    await ada.join(doc);
    const bobDoc = await bob.join(doc);
    assert.deepEqual(bobDoc.users.get(ada.userId).info, { color: "#e91e63", name: "Ada" });
    const joined = waitFor(bobDoc, "join");
    const cy = client(server.url, { info: { name: "Cy" } });
    await cy.join(doc);
    const entry = await joined;
    assert.equal(entry.userId, cy.userId);
    assert.deepEqual(entry.info, { name: "Cy" });
    const nobody = client(server.url);
    await nobody.join(doc);
    await until(() => bobDoc.users.has(nobody.userId));
    assert.equal(bobDoc.users.get(nobody.userId).info, null);
  });

  test("close() rejects pending joins and stops for good", async () => {
    const c = client(server.url);
    const pending = c.join(newId());
    c.close();
    await assert.rejects(pending, ClientError);
    assert.equal(c.state, "closed");
    await assert.rejects(c.join(newId()), ClientError);
  });
});

describe("reconnect", () => {
  test("after a server restart: backoff, re-join, map rebuilt, own presence re-sent", async () => {
    let server = await startServer();
    const port = server.port;
    const doc = newId();
    try {
      const alice = client(server.url);
      const bob = client(server.url);
      const aliceDoc = await alice.join(doc);
      const bobDoc = await bob.join(doc);
      bobDoc.status("busy");
      bobDoc.cursor(at(9, 3));
      await until(() => aliceDoc.users.get(bob.userId)?.status === "busy");
      await until(() => aliceDoc.users.get(bob.userId)?.cursor?.line === 9);

      const reconnecting = waitFor(alice, "reconnecting");
      const lost = waitFor(aliceDoc, "connection", (up) => up === false);
      await server.kill(); // no goodbye: as if the process died
      const info = await reconnecting;
      assert.ok(info.delayMs >= 0 && info.delayMs <= 20, `first delay within the initial ceiling: ${info.delayMs}`);
      await lost;
      assert.equal(aliceDoc.joined, false);
      assert.ok(aliceDoc.users.has(bob.userId), "the stale map is kept until the re-join");

      const reconnected = waitFor(alice, "reconnected");
      const synced = waitFor(aliceDoc, "sync");
      server = await startServer([], { port });
      await reconnected;
      await synced;
      assert.equal(aliceDoc.joined, true);
      // Bob re-joins on his own and re-sends his presence; Alice's map has it again.
      await until(() => {
        const entry = aliceDoc.users.get(bob.userId);
        return entry?.status === "busy" && entry.cursor?.line === 9 && entry.cursor.column === 3;
      }, undefined, "Bob's presence after the restart");
      assert.equal(alice.state, "open");
    } finally {
      closeAll();
      await server.stop();
    }
  });
});

describe("a refused re-join", () => {
  test("ends the session with a 'refused' event", async () => {
    const args = ["--max-members-per-document", "1"];
    let server = await startServer(args);
    const doc = newId();
    // A gate in front of Alice's WebSocket: closed, her reconnects fail until it opens.
    let gateOpen = true;
    class GatedWebSocket extends WebSocket {
      constructor(url, protocols) {
        if (!gateOpen) throw new Error("gate closed");
        super(url, protocols);
      }
    }
    try {
      const alice = client(server.url, { WebSocket: GatedWebSocket });
      const aliceDoc = await alice.join(doc);
      gateOpen = false;
      const lost = waitFor(aliceDoc, "connection", (up) => up === false);
      await server.kill();
      await lost;
      server = await startServer(args, { port: server.port });
      const bob = client(server.url);
      await bob.join(doc); // takes the only place
      const refused = waitFor(aliceDoc, "refused");
      gateOpen = true;
      const error = await refused;
      assert.ok(error instanceof JoinError);
      assert.equal(error.code, "DOCUMENT_ERROR");
      assert.equal(alice.document(doc), undefined);
      assert.equal(aliceDoc.joined, false);
      assert.equal(alice.state, "open", "the connection itself is fine");
    } finally {
      closeAll();
      await server.stop();
    }
  });
});

describe("tokens", () => {
  const secret = "s".repeat(40);
  let server;
  before(async () => {
    server = await startServer(["--jwt-secret", secret]);
  });
  after(async () => {
    closeAll();
    await server?.stop();
  });

  test("a token is offered as a subprotocol (the server selects cpc.v1) and gives the user id", async () => {
    const sub = newId();
    const token = hs256({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, secret);
    const c = client(server.url, { token });
    assert.equal(c.userId, sub);
    const doc = await c.join(newId());
    assert.equal(doc.joined, true);
  });

  test("tokenIn: 'query' sends it as ?token= instead", async () => {
    const sub = newId();
    const token = hs256({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, secret);
    const doc = await client(server.url, { token, tokenIn: "query" }).join(newId());
    assert.equal(doc.joined, true);
  });

  test("a token provider is called for each connection", async () => {
    const sub = newId();
    let calls = 0;
    const c = client(server.url, {
      userId: sub,
      token: async () => {
        calls += 1;
        return hs256({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, secret);
      },
    });
    await c.join(newId());
    assert.equal(calls, 1);
  });

  test("a bad token: AUTH_ERROR, the join rejects, no reconnect", async () => {
    const token = hs256({ sub: newId(), exp: Math.floor(Date.now() / 1000) + 600 }, "wrong".repeat(8));
    const c = client(server.url, { token });
    const errors = collect(c, "Error");
    const closed = waitFor(c, "close");
    await assert.rejects(c.join(newId()), (error) => {
      assert.ok(error instanceof JoinError, String(error));
      assert.equal(error.code, "AUTH_ERROR");
      return true;
    });
    const info = await closed;
    assert.equal(info.code, 1008);
    assert.equal(info.willReconnect, false);
    assert.equal(c.state, "closed");
    assert.equal(errors[0].code, "AUTH_ERROR");
  });
});

describe("what goes on the wire", () => {
  test("the token is in Sec-WebSocket-Protocol, never in the URL", async () => {
    // A plain HTTP server that records the handshake request and hangs up.
    const seen = [];
    const http = createServer();
    http.on("upgrade", (request, socket) => {
      seen.push({ url: request.url, protocol: request.headers["sec-websocket-protocol"] });
      socket.destroy();
    });
    await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
    try {
      const token = hs256({ sub: newId(), exp: Math.floor(Date.now() / 1000) + 600 }, "k".repeat(32));
      const c = client(`ws://127.0.0.1:${http.address().port}/ws`, { token, reconnect: false });
      await assert.rejects(c.connect(), ClientError);
      assert.deepEqual(seen, [{ url: "/ws", protocol: `cpc.v1, cpc.token.${token}` }]);
    } finally {
      closeAll();
      http.close();
    }
  });

  test("info rides on the join; a bad info is refused at once", async () => {
    assert.throws(() => new CpcClient("ws://x/ws", { info: "Ada" }), TypeError);
    assert.throws(() => new CpcClient("ws://x/ws", { info: { name: "x".repeat(2000) } }), TypeError);
  });
});

describe("refusals", () => {
  test("comments refused because the server's storage is full leave doc.notes", async () => {
    const server = await startServer(["--max-stored-bytes", "1000"]);
    try {
      const doc = newId();
      const author = client(server.url);
      const reader = client(server.url);
      const authorDoc = await author.join(doc);
      const readerDoc = await reader.join(doc);
      const refused = [];
      authorDoc.on("noteRefused", (note, error) => refused.push([note, error]));
      const received = collect(readerDoc, "note");
      for (let i = 0; i < 12; i++) authorDoc.comment(at(i, 0), `comment ${i} `.padEnd(100, "."));
      await until(() => refused.length > 0 && received.length + refused.length === 12);
      assert.ok(refused.every(([, error]) => error.code === "CONNECTION_ERROR"));
      // What the author still shows is exactly what the others got.
      assert.deepEqual(
        authorDoc.notes.map((n) => n.content),
        received.map((n) => n.content),
      );
    } finally {
      closeAll();
      await server.stop();
    }
  });

  test("a comment the server refuses leaves doc.notes and says so; later ones stay", async () => {
    const server = await startServer(["--max-content-chars", "10"]);
    try {
      const doc = newId();
      const author = client(server.url);
      const reader = client(server.url);
      const authorDoc = await author.join(doc);
      const readerDoc = await reader.join(doc);
      const refused = waitFor(authorDoc, "noteRefused");
      // In one burst: the first is accepted (silently), the second refused, the third accepted.
      authorDoc.comment(at(0, 0), "first");
      authorDoc.comment(at(1, 0), "far too long for this server");
      authorDoc.comment(at(2, 0), "last");
      const [note, error] = await refused;
      assert.equal(note.content, "far too long for this server");
      assert.equal(error.code, "PARSE_ERROR");
      await until(() => readerDoc.notes.length === 2, undefined, "the reader's two notes");
      assert.deepEqual(
        authorDoc.notes.map((n) => n.content),
        ["first", "last"],
      );
      assert.deepEqual(
        readerDoc.notes.map((n) => n.content),
        ["first", "last"],
      );
    } finally {
      closeAll();
      await server.stop();
    }
  });
});
