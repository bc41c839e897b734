// Test helpers: a real cpc-signaling server as a subprocess, and waiting for events.
import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
// Timeouts scale with CPC_TEST_TIMEOUT_UNIT, as in the Python tests.
export const UNIT = Number(process.env.CPC_TEST_TIMEOUT_UNIT ?? "1");
export const TIMEOUT = 5000 * UNIT;

export const newId = () => randomUUID();

function serverCommand() {
  if (process.env.CPC_SIGNALING_BIN) return [process.env.CPC_SIGNALING_BIN];
  const venv = `${ROOT}.venv/bin/cpc-signaling`;
  return [existsSync(venv) ? venv : "cpc-signaling"];
}

/**
 * `cpc-signaling serve --port 0 ARGS` (or `--port PORT`), waiting for its ws:// log line.
 * Returns {url, port, proc, output, stop(), kill()}.
 */
export async function startServer(args = [], { port = 0 } = {}) {
  const [bin] = serverCommand();
  const proc = spawn(bin, ["serve", "--port", String(port), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
  });
  let output = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${output}`)), 15000 * UNIT);
    const onData = (chunk) => {
      output += chunk;
      const match = /ws:\/\/\S+/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[0]);
      }
    };
    proc.stdout.setEncoding("utf8").on("data", onData);
    proc.stderr.setEncoding("utf8").on("data", onData);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before listening:\n${output}`));
    });
  });
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  const server = {
    url,
    port: Number(new URL(url).port),
    proc,
    get output() {
      return output;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      await exited;
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await exited;
    },
  };
  return server;
}

/** Resolve with the first `event` args of `emitter` for which `predicate` holds. */
export function waitFor(emitter, event, predicate = () => true, timeout = TIMEOUT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${event}`));
    }, timeout);
    const off = emitter.on(event, (...args) => {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

/** Poll `check` until it returns a truthy value. */
export async function until(check, timeout = TIMEOUT, what = "condition") {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Collect every `event` of `emitter` into an array until the returned stop() is called. */
export function collect(emitter, event) {
  const got = [];
  const off = emitter.on(event, (message) => got.push(message));
  got.stop = off;
  return got;
}

function base64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT, as the server's --jwt-secret verifies. */
export function hs256(claims, secret) {
  const head = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = base64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}
