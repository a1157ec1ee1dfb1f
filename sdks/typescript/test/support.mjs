// Real `orbit server` processes for the tests: the binary is ORBIT_BIN, else the workspace's
// build (CARGO_TARGET_DIR or target/, debug then release).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const KEY = "typescript-sdk-test-key-0123456789";

export function orbitBin() {
  if (process.env.ORBIT_BIN) return process.env.ORBIT_BIN;
  const roots = [process.env.CARGO_TARGET_DIR, resolve(import.meta.dirname, "../../../target")].filter(Boolean);
  for (const root of roots) {
    for (const profile of ["debug", "release"]) {
      const bin = join(root, profile, "orbit");
      if (existsSync(bin)) return bin;
    }
  }
  throw new Error("no orbit binary: build it (cargo build -p orbit-cli) or set ORBIT_BIN");
}

/** Starts `orbit server` with the secret key; `{ base, dir, stop() }`. */
export async function startServer({ database, env = {}, args = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "orbit-ts-"));
  const child = spawn(orbitBin(), ["server", "--bind", "127.0.0.1:0", ...args], {
    cwd: dir,
    env: {
      ...process.env,
      ORBIT_DATABASE_URL: database ?? `sqlite://${dir}/orbit.db`,
      ORBIT_SECRET_KEY: KEY,
      ORBIT_LOG: "error",
      ORBIT_API_TOKEN: "",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const base = await new Promise((resolvePromise, reject) => {
    child.stdout.once("data", (d) => resolvePromise(String(d).match(/http:\/\/\S+/)?.[0]));
    child.once("exit", (code) => reject(new Error(`orbit server exited (${code})`)));
  });
  return {
    base,
    dir,
    child,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

export async function api(base, method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

/** Waits until the run settles; its detail. */
export async function settled(base, run, within = 30_000) {
  const end = Date.now() + within;
  for (;;) {
    const { body } = await api(base, "GET", `/api/v1/runs/${run}?taskLimit=1000`);
    if (["succeeded", "failed", "cancelled"].includes(body?.run?.state)) return body;
    if (Date.now() > end) throw new Error(`run ${run} did not settle: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

import { execFileSync, spawnSync } from "node:child_process";
import { chownSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";

function freePort() {
  return new Promise((resolvePort) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

/**
 * A PostgreSQL database for one test: a fresh database on ORBIT_TEST_PG_URL's server, else a
 * private cluster (initdb + pg_ctl on a free port in a temporary directory), as the Rust tests
 * do. `{ url, stop() }`, or null when this machine has no PostgreSQL programs.
 */
export async function startPostgres() {
  const name = `orbit_ts_${process.pid}_${Date.now()}`;
  if (process.env.ORBIT_TEST_PG_URL) {
    const admin = process.env.ORBIT_TEST_PG_URL;
    execFileSync("psql", [admin, "-qc", `CREATE DATABASE ${name}`]);
    const url = new URL(admin);
    url.pathname = `/${name}`;
    return {
      url: url.toString(),
      stop: () => spawnSync("psql", [admin, "-qc", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]),
    };
  }
  const roots = existsSync("/usr/lib/postgresql") ? readdirSync("/usr/lib/postgresql").map((v) => `/usr/lib/postgresql/${v}/bin`) : [];
  const bin = roots.find((d) => existsSync(join(d, "initdb")));
  if (!bin) return null;
  const dir = mkdtempSync(join(tmpdir(), "orbit-ts-pg-"));
  const root = process.getuid?.() === 0;
  const run = (program, args) => {
    const [cmd, argv] = root ? ["runuser", ["-u", "postgres", "--", join(bin, program), ...args]] : [join(bin, program), args];
    execFileSync(cmd, argv, { stdio: "ignore" });
  };
  if (root) chownSync(dir, Number(execFileSync("id", ["-u", "postgres"]).toString()), Number(execFileSync("id", ["-g", "postgres"]).toString()));
  const data = join(dir, "data");
  run("initdb", ["-D", data, "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
  const port = await freePort();
  run("pg_ctl", ["-D", data, "-l", join(dir, "log"), "-w", "-t", "60", "start", "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`]);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop() {
      try {
        run("pg_ctl", ["-D", data, "-m", "immediate", "stop"]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
