// The SDK against a real `orbit server` process: the TypeScript example service (compiled from
// examples/worker-ts) in pull and push mode, on SQLite and on PostgreSQL, and workers in this
// process for retries, lease loss, large values, code versions, pipelines in code and the client.
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { createWorker, definePipeline, FatalError, OrbitClient, RetryAfterError } from "@orbit/sdk";
import { KEY, api, settled, startServer, startPostgres } from "./support.mjs";

const root = new URL("../../../", import.meta.url);
const CHECKOUT = readFileSync(new URL("examples/worker/pipeline.yaml", root), "utf8");

/** Compiles examples/worker-ts into build-example/ (inside the SDK, so `@orbit/sdk` resolves). */
function buildExample() {
  execFileSync("npx", ["tsc", "-p", new URL("examples/worker-ts/tsconfig.json", root).pathname], {
    cwd: new URL("..", import.meta.url),
    stdio: "inherit",
  });
}

/** Runs the compiled example service; resolves once it has registered. */
async function shop(base, args = []) {
  const child = spawn(process.execPath, [new URL("../build-example/main.js", import.meta.url).pathname, ...args], {
    env: { ...process.env, ORBIT_URL: base, ORBIT_SECRET_KEY: KEY },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    child.stdout.once("data", resolve);
    child.once("exit", (code) => reject(new Error(`the example exited (${code})`)));
  });
  // Registered once the service's tasks are listed.
  for (let i = 0; i < 100; i++) {
    const { status } = await api(base, "GET", "/api/v1/services/shop/tasks");
    if (status === 200) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return child;
}

const task = (detail, name) => detail.tasks.find((t) => t.taskName === name);

async function trigger(base, pipeline, input) {
  const { status, body } = await api(base, "POST", `/api/v1/pipelines/${pipeline}/trigger`, { input });
  assert.ok(status === 201 || status === 200, JSON.stringify(body));
  return body.run.id;
}

async function checkoutRuns(base) {
  const { status } = await api(base, "POST", "/api/v1/pipelines", { yaml: CHECKOUT });
  assert.ok(status === 201 || status === 200);
  // Fast: express runs, standard is skipped; the report sees the payment's receipt.
  const fast = await settled(base, await trigger(base, "checkout", { orderId: "o-1", amount: 12.5, fast: true }));
  assert.equal(fast.run.state, "succeeded", JSON.stringify(fast));
  assert.equal(task(fast, "express").state, "succeeded");
  assert.equal(task(fast, "standard").state, "skipped");
  assert.equal(task(fast, "report").output.receipt, "rcpt-o-1", "upstream output reached the handler");
  assert.equal(task(fast, "report").progress, 1, "progress was recorded");
  const pay = await api(base, "GET", `/api/v1/task-runs/${task(fast, "payment").id}`);
  assert.match(pay.body.attempts[0].log, /\[INFO\] charging 12.5 for o-1/);
  // The same order again: the payment is reused, not charged twice.
  const again = await settled(base, await trigger(base, "checkout", { orderId: "o-1", amount: 12.5, fast: false }));
  assert.equal(task(again, "standard").state, "succeeded");
  const reused = await api(base, "GET", `/api/v1/task-runs/${task(again, "payment").id}`);
  assert.equal(reused.body.attempts[0].outcome, "reused", JSON.stringify(reused.body.attempts));
  // A fatal error: dead after one attempt, in the dead-letter queue.
  const bad = await settled(base, await trigger(base, "checkout", { orderId: "o-2", amount: -1, fast: true }));
  assert.equal(bad.run.state, "failed");
  const dead = task(bad, "payment");
  assert.equal(dead.state, "dead");
  assert.equal(dead.attempt, 1, "a FatalError is not retried");
  assert.match(dead.error, /refusing a negative amount -1/);
  const dlq = await api(base, "GET", "/api/v1/dlq");
  assert.ok(dlq.body.some((e) => e.taskRunId === dead.id || e.id === dead.id), JSON.stringify(dlq.body));
}

before(buildExample);

describe("the example service", () => {
  test("in pull mode on SQLite", async () => {
    const s = await startServer({ args: ["--workers", "0"] });
    const worker = await shop(s.base);
    try {
      await checkoutRuns(s.base);
    } finally {
      worker.kill("SIGTERM");
      await s.stop();
    }
  });

  test("in push mode on SQLite", async () => {
    const s = await startServer({ args: ["--workers", "0"] });
    const worker = await shop(s.base, ["--push", "0"]);
    try {
      await checkoutRuns(s.base);
    } finally {
      worker.kill("SIGTERM");
      await s.stop();
    }
  });

  test("in pull mode on PostgreSQL", async (t) => {
    const pg = await startPostgres();
    if (!pg) {
      if (process.env.CI) assert.fail("no PostgreSQL programs on this CI machine");
      t.skip("no PostgreSQL here (set ORBIT_TEST_PG_URL or install postgresql)");
      return;
    }
    const s = await startServer({ database: pg.url, args: ["--workers", "0"] });
    const worker = await shop(s.base);
    try {
      await checkoutRuns(s.base);
    } finally {
      worker.kill("SIGTERM");
      await s.stop();
      pg.stop();
    }
  });
});

describe("workers in this process", () => {
  let s;
  before(async () => {
    // Embedded workers run the built-in steps of the pipelines in code.
    s = await startServer({ args: ["--workers", "2"], env: { ORBIT_STORAGE_THRESHOLD: "64KiB" } });
  });
  after(() => s.stop());

  const make = (serviceId) => createWorker({ orchestratorUrl: s.base, serviceId, secretKey: KEY, concurrency: 4, graceMs: 2000 });

  async function saved(doc) {
    const { status, body } = await api(s.base, "POST", "/api/v1/pipelines", doc);
    assert.ok(status === 201 || status === 200, JSON.stringify(body));
  }

  test("a retried error succeeds on a later attempt", async () => {
    const w = make("flaky");
    w.register("flaky", async (ctx) => {
      if (ctx.attempt < 3) throw new Error(`attempt ${ctx.attempt} failed`);
      return { attempt: ctx.attempt };
    });
    const running = w.start();
    await saved({ name: "flaky", tasks: [{ name: "flaky", type: "worker", retry: { max_attempts: 3, initial: "10ms" } }] });
    const d = await settled(s.base, await trigger(s.base, "flaky", {}));
    await w.stop();
    await running;
    assert.equal(d.run.state, "succeeded");
    assert.deepEqual(task(d, "flaky").output, { attempt: 3 });
  });

  test("a lost lease stops the handler and its late result is refused", async () => {
    const w = make("slow");
    let aborted;
    w.register("slow", { heartbeatIntervalMs: 100 }, async (ctx) => {
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      aborted = ctx.signal.reason?.message;
      return "too late";
    });
    const running = w.start();
    await saved({ name: "slow", tasks: [{ name: "slow", type: "worker", heartbeat_interval: "1s" }] });
    const run = await trigger(s.base, "slow", {});
    for (let i = 0; i < 100; i++) {
      const { body } = await api(s.base, "GET", `/api/v1/runs/${run}`);
      if (task(body, "slow")?.state === "running") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const cancel = await api(s.base, "POST", `/api/v1/runs/${run}/cancel`);
    assert.equal(cancel.status, 200);
    for (let i = 0; i < 100 && !aborted; i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(aborted ?? "", /lease was lost/, "the heartbeat's 409 stopped the handler");
    await w.stop();
    await running;
    const d = await settled(s.base, run);
    assert.equal(d.run.state, "cancelled");
    const attempts = (await api(s.base, "GET", `/api/v1/task-runs/${task(d, "slow").id}`)).body.attempts;
    assert.equal(attempts[0].outcome, "cancelled", "the late result was not kept");
  });

  test("a 200 KB input and output round-trip through the local object store", async () => {
    const w = make("big");
    w.register("grow", async (ctx) => ({ rows: ctx.input.rows.map((r) => r.toUpperCase()) }));
    w.register("count", async (ctx) => ctx.upstream.grow.rows.length);
    const running = w.start();
    await saved({
      name: "big",
      tasks: [
        { name: "grow", type: "worker" },
        { name: "count", type: "worker", needs: "grow" },
      ],
    });
    const rows = Array.from({ length: 10_000 }, (_, i) => `row-${i}-xxxxxxxx`);
    const d = await settled(s.base, await trigger(s.base, "big", { rows }));
    await w.stop();
    await running;
    assert.equal(d.run.state, "succeeded", JSON.stringify(d.run));
    assert.ok(d.run.input.$orbit_object, "the input was stored as an object");
    assert.ok(task(d, "grow").output.$orbit_object, "the output was uploaded as an object");
    assert.equal(task(d, "count").output, 10_000);
    const log = (await api(s.base, "GET", `/api/v1/task-runs/${task(d, "grow").id}`)).body.attempts[0].log;
    assert.match(log, /written by the worker to object/);
  });

  test("a new handler body bumps the code version", async () => {
    const register = async (handler) => {
      const w = make("versions");
      w.register("calc", handler);
      return (await w.registerWithServer())[0];
    };
    const first = await register(async (ctx) => ctx.input.a + ctx.input.b);
    // prettier-ignore
    const same = await register(async(ctx)=>ctx.input.a+ctx.input.b);
    const changed = await register(async (ctx) => ctx.input.a * ctx.input.b);
    assert.equal(same.codeVersion, first.codeVersion, "formatting is not a new version");
    assert.equal(changed.codeVersion, first.codeVersion + 1);
    assert.equal(changed.changed, true);
    const history = await api(s.base, "GET", "/api/v1/tasks/calc/history");
    assert.equal(history.status, 200, JSON.stringify(history.body));
  });

  test("a pipeline in code is saved when its worker starts and runs on it; the client follows it", async () => {
    const w = make("coded");
    const p = definePipeline({
      name: "coded",
      steps: [
        { name: "double", handler: async (ctx) => ctx.input.n * 2 },
        { name: "wait", type: "sleep", params: { duration: "10ms" } },
        { name: "report", handler: async (ctx) => `got ${ctx.upstream.double}` },
      ],
    }).attach(w);
    assert.equal(p.name, "coded");
    const running = w.start();
    const client = new OrbitClient({ url: s.base });
    for (let i = 0; i < 100; i++) {
      if ((await api(s.base, "GET", "/api/v1/pipelines/coded")).status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const { run } = await client.trigger("coded", { n: 21 });
    const d = await client.waitForRun(run.id, { timeoutMs: 30_000, intervalMs: 50 });
    assert.equal(d.run.state, "succeeded");
    assert.equal(d.tasks.find((t) => t.taskName === "report").output, "got 42");
    const listed = await client.listRuns({ pipeline: "coded", limit: 5 });
    assert.equal(listed.runs[0].id, run.id);
    // A pipeline file with the same tasks gives the same stored definition (saved under
    // another name, so as not to become a version of this one).
    const stored = (await api(s.base, "GET", "/api/v1/pipelines/coded")).body;
    const file = [
      "name: coded-file",
      "tasks:",
      "  - {name: double, type: worker, task: coded.double}",
      "  - {name: wait, type: sleep, duration: 10ms, needs: [double]}",
      "  - {name: report, type: worker, task: coded.report, needs: [double, wait]}",
    ].join("\n");
    const { body: fromFile } = await api(s.base, "POST", "/api/v1/pipelines", { yaml: file });
    assert.deepEqual({ ...fromFile.definition, name: "coded" }, stored.definition, "the same definition from a file");
    // Saved again by a restart: unchanged, no new version.
    const before = (await api(s.base, "GET", "/api/v1/pipelines/coded")).body.version;
    await w.stop();
    await running;
    const w2 = make("coded");
    definePipeline(p.spec).attach(w2);
    await w2.registerWithServer();
    assert.equal((await api(s.base, "GET", "/api/v1/pipelines/coded")).body.version, before);
    // The client's errors say what the server said.
    await assert.rejects(client.getRun("nope"), /404/);
    const failed = await client.trigger("coded", { n: "x" });
    const cancelled = await client.cancel(failed.run.id);
    assert.equal(cancelled.state, "cancelled");
    const retried = await client.retry(failed.run.id);
    assert.ok(Array.isArray(retried.requeued));
    // Named limits of concurrency keys (a key that needs escaping in a path).
    assert.deepEqual(await client.setLimit("api/eu west", 4), { key: "api/eu west", running: 0, runsRunning: 0, limit: 4 });
    assert.deepEqual((await client.limits()).map((u) => u.key), ["api/eu west"]);
    await client.deleteLimit("api/eu west");
    assert.deepEqual(await client.limits(), []);
    await assert.rejects(client.deleteLimit("api/eu west"), /404/);
  });

  test("the client signals a wait, approves an approval, re-runs from a step, explains and draws the timeline", async () => {
    const w = make("gate");
    definePipeline({
      name: "gate",
      steps: [
        { name: "pay", type: "wait", params: { event: "paid.{{ input.id }}" } },
        { name: "review", type: "approval", params: { message: "Ship {{ input.id }}?", approvers: ["ann"] } },
        { name: "ship", handler: async (ctx) => `shipped ${ctx.upstream.pay.amount} for ${ctx.upstream.review.decidedBy}` },
      ],
    }).attach(w);
    definePipeline({
      name: "notifier",
      steps: [
        {
          name: "notify",
          // Kept, and the attempt carries the run's trace.
          handler: async (ctx) =>
            (await ctx.sendSignal(`paid.${ctx.input.id}`, { amount: 3 })).kept &&
            ctx.traceparent.startsWith(`00-${ctx.runId.replaceAll("-", "")}-`),
        },
      ],
    }).attach(w);
    const running = w.start();
    const client = new OrbitClient({ url: s.base });
    for (let i = 0; i < 100; i++) {
      if ((await api(s.base, "GET", "/api/v1/pipelines/notifier")).status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const { run } = await client.trigger("gate", { id: "t-1" });
    const until = async (what, check) => {
      for (let i = 0; i < 300; i++) {
        const d = await client.getRun(run.id);
        if (check(d)) return d;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`never: ${what}`);
    };
    const parked = (name) => (d) => d.tasks.find((t) => t.taskName === name)?.state === "parked";
    await until("pay parked", parked("pay"));
    const why = await client.why(run.id, "pay");
    assert.match(why.why[0].reason, /waiting for signal `paid\.t-1`/);
    const sent = await client.signal("paid.t-1", { amount: 9 });
    assert.deepEqual(sent.delivered, [{ runId: run.id, task: "pay" }]);
    assert.equal((await client.signal("paid.t-1", { amount: 1 }, { ttl: "1m" })).kept, true, "a second signal finds no waiter");
    await until("review parked", parked("review"));
    await assert.rejects(client.approve(run.id, "review", { by: "bob" }), /403/);
    const decided = await client.approve(run.id, "review", { by: "ann", comment: "ok" });
    assert.equal(decided.wake.decidedBy, "ann");
    const done = await client.waitForRun(run.id, { timeoutMs: 30_000, intervalMs: 50 });
    assert.equal(done.run.state, "succeeded");
    assert.equal(task(done, "ship").output, "shipped 9 for ann");
    const timeline = await client.timeline(run.id);
    assert.deepEqual(timeline.lanes.map((l) => l.task), ["pay", "review", "ship"]);
    assert.ok(timeline.lanes.find((l) => l.task === "review").segments.some((x) => x.kind === "parked"));
    assert.ok(timeline.lanes.every((l) => l.critical), "a chain is all critical");
    const again = await client.rerun(run.id, "ship");
    assert.deepEqual(again.reused, ["pay", "review"]);
    assert.equal(again.run.rerunOf, run.id);
    const redone = await client.waitForRun(again.run.id, { timeoutMs: 30_000, intervalMs: 50 });
    assert.equal(task(redone, "ship").output, "shipped 9 for ann", "the kept outputs reached the step run again");
    // A handler sends a signal before anything waits for it: the wait that comes next takes it.
    const sender = await client.waitForRun((await client.trigger("notifier", { id: "t-2" })).run.id, { timeoutMs: 30_000, intervalMs: 50 });
    assert.equal(task(sender, "notify").output, true, "kept");
    const second = (await client.trigger("gate", { id: "t-2" })).run.id;
    for (let i = 0; i < 300; i++) {
      if ((await client.getRun(second)).tasks.find((t) => t.taskName === "review")?.state === "parked") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await client.approve(second, "review", { by: "ann" });
    const paid = await client.waitForRun(second, { timeoutMs: 30_000, intervalMs: 50 });
    assert.equal(task(paid, "ship").output, "shipped 3 for ann");
    await w.stop();
    await running;
  });

  test("a fatal error thrown as FatalError is not retried", async () => {
    const w = make("fatal");
    w.register("fatal", async () => {
      throw new FatalError("no such customer");
    });
    const running = w.start();
    await saved({ name: "fatal", tasks: [{ name: "fatal", type: "worker", retry: { max_attempts: 5, initial: "10ms" } }] });
    const d = await settled(s.base, await trigger(s.base, "fatal", {}));
    await w.stop();
    await running;
    assert.equal(task(d, "fatal").state, "dead");
    assert.equal(task(d, "fatal").attempt, 1);
  });

  test("a handler mapped over a list gets one element each", async () => {
    const w = make("mapper");
    w.register("double", async (ctx) => ctx.input * 2);
    const running = w.start();
    await saved({
      name: "mapped",
      tasks: [
        { name: "double", type: "worker", for_each: "{{ input.numbers }}" },
        { name: "sum", type: "sleep", duration: "0s", needs: ["double"] },
      ],
    });
    const numbers = Array.from({ length: 25 }, (_, i) => i);
    const d = await settled(s.base, await trigger(s.base, "mapped", { numbers }));
    await w.stop();
    await running;
    assert.equal(d.run.state, "succeeded");
    assert.deepEqual(task(d, "double").output, numbers.map((n) => n * 2));
    assert.equal(d.children.reduce((a, c) => a + c.count, 0), 25);
  });

  test("RetryAfterError waits as told without spending a retry", async () => {
    const w = make("quota");
    const calls = [];
    w.register("quota", async () => {
      calls.push(Date.now());
      if (calls.length < 3) throw new RetryAfterError("quota exceeded", 300);
      return "done";
    });
    const running = w.start();
    // No retries at all: only attempts that do not count can come back.
    await saved({ name: "quota", tasks: [{ name: "quota", type: "worker", retry: { max_attempts: 1 } }] });
    const d = await settled(s.base, await trigger(s.base, "quota", {}));
    await w.stop();
    await running;
    assert.equal(task(d, "quota").state, "succeeded");
    assert.equal(task(d, "quota").output, "done");
    assert.ok(calls[1] - calls[0] >= 290 && calls[2] - calls[1] >= 290, `${calls}`);
    const tr = await (await fetch(`${s.base}/api/v1/task-runs/${task(d, "quota").id}`)).json();
    assert.deepEqual(tr.attempts.map((a) => a.outcome), ["throttled", "throttled", "succeeded"]);
  });
});

test("src/api.ts is what the server's OpenAPI document describes", () => {
  execFileSync(process.execPath, [new URL("../scripts/gen-api.mjs", import.meta.url).pathname, "--check"], { stdio: "inherit" });
});
