// Every API of the SDK through runLocal and the pure helpers: no server, no database.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createWorker, definePipeline, FatalError, runLocal, keyTemplate, codeHash, OrbitClient } from "@orbit/sdk";
import { createRequire } from "node:module";

const worker = () => createWorker({ orchestratorUrl: "http://127.0.0.1:9", serviceId: "unit", secretKey: "unit-test-key-0123456789" });

test("the seed's handlers run locally with the same context", async () => {
  const w = worker();
  w.register("process", async (ctx) => {
    const { data } = ctx.input;
    return { processed: true, result: data.toUpperCase() };
  });
  const result = await runLocal(w, "process", { input: { data: "hello" } });
  assert.deepEqual(result.output, { processed: true, result: "HELLO" });
});

test("context: upstream, ids, attempt, code version, effect key, log lines, progress, signal", async () => {
  const w = worker();
  let seen;
  w.register("look", async (ctx) => {
    ctx.log.info("looking at", ctx.input.n);
    ctx.log.warn("careful");
    ctx.log.error({ code: 7 });
    await ctx.progress(0.5, "half");
    seen = { ...ctx, log: undefined, progress: undefined };
    return ctx.upstream.fetch.rows + ctx.input.n;
  });
  const r = await runLocal(w, "look", { input: { n: 2 }, upstream: { fetch: { rows: 40 } } });
  assert.equal(r.output, 42);
  assert.deepEqual(r.logs, ["[INFO] looking at 2", "[WARN] careful", '[ERROR] {"code":7}']);
  assert.equal(seen.attempt, 1);
  assert.equal(seen.codeVersion, 0);
  assert.equal(seen.effectKey, "local-look");
  assert.equal(seen.signal.aborted, false);
});

test("routing: runNext is checked against allowedNext", async () => {
  const w = worker();
  w.register("router", { allowedNext: ["path-a", "path-b"] }, async (ctx) =>
    ctx.input.fast ? { output: { routed: true }, runNext: ["path-a"] } : { output: { routed: true }, runNext: ["path-c"] },
  );
  assert.deepEqual((await runLocal(w, "router", { input: { fast: true } })).runNext, ["path-a"]);
  await assert.rejects(runLocal(w, "router", { input: {} }), /run_next names `path-c`, not in allowed_next \[path-a, path-b\]/);
});

test("a value with other keys than output/runNext is an output, not a result", async () => {
  const w = worker();
  w.register("plain", () => ({ output: 1, other: 2 }));
  w.register("nothing", () => undefined);
  assert.deepEqual((await runLocal(w, "plain")).output, { output: 1, other: 2 });
  assert.equal((await runLocal(w, "nothing")).output, null);
});

test("errors: FatalError and others reach the caller as thrown", async () => {
  const w = worker();
  w.register("fatal", () => {
    throw new FatalError("card declined");
  });
  await assert.rejects(runLocal(w, "fatal"), (e) => e instanceof FatalError && e.message === "card declined");
  await assert.rejects(runLocal(w, "missing"), /no task `missing` is registered/);
});

test("code versions: the source's hash, not its formatting; an explicit version wins", () => {
  const a = async (ctx) => {
    // a comment
    return { total: ctx.input.a + ctx.input.b };
  };
  // prettier-ignore
  const b = async(ctx)=>{return {total:ctx.input.a+ctx.input.b};};
  const c = async (ctx) => ({ total: ctx.input.a - ctx.input.b });
  assert.equal(codeHash(a), codeHash(b), "formatting and comments do not count");
  assert.notEqual(codeHash(a), codeHash(c), "what it does counts");
  const w = worker();
  w.register("a", a).register("v", { codeVersion: "7" }, c);
  const reg = w.registration();
  assert.equal(reg.tasks[0].codeHash, codeHash(a));
  assert.equal(reg.tasks[1].codeHash, "version:7");
});

test("idempotency keys: a function becomes the template the server evaluates", () => {
  assert.equal(keyTemplate((input, codeVersion) => `v${codeVersion}-${input.orderId}`), "v{{ code_version }}-{{ input.orderId }}");
  assert.equal(keyTemplate("pay-{{ input.id }}"), "pay-{{ input.id }}");
  assert.throws(() => keyTemplate((input) => input.items.map((x) => x)), /idempotencyKey/);
  const w = worker();
  w.register("payment", { idempotencyKey: (input, v) => `v${v}-${input.orderId}`, retries: 3, timeoutMs: 1000, heartbeatIntervalMs: 200 }, async () => ({ ok: true }));
  const t = w.registration("http://x/orbit/task").tasks[0];
  assert.deepEqual(
    { key: t.idempotencyKey, retries: t.retries, timeoutMs: t.timeoutMs, hb: t.heartbeatIntervalMs },
    { key: "v{{ code_version }}-{{ input.orderId }}", retries: 3, timeoutMs: 1000, hb: 200 },
  );
});

test("bad options are refused at once", () => {
  assert.throws(() => createWorker({ orchestratorUrl: "http://x", serviceId: "s", secretKey: "short" }), /secretKey/);
  assert.throws(() => createWorker({ serviceId: "s", secretKey: "x".repeat(20) }), /orchestratorUrl/);
  assert.throws(() => worker().register("bad name", () => 1), /a name is/);
  assert.throws(() => worker().register("x", {}), /handler function is required/);
});

test("pipelines in code: tasks and the seed's steps give the file format", () => {
  const p = definePipeline({
    name: "data-import",
    concurrency: { key: "import-{{ input.source }}" },
    output: { rows: "{{ tasks.transform.output }}" },
    steps: [
      { name: "import-data", handler: async () => ({ success: true }) },
      { name: "transform", handler: async (ctx) => ctx.upstream["import-data"] },
      { name: "wait", type: "sleep", params: { duration: "1s" }, concurrency: { key: "{{ input.tenant }}", limit: 2 } },
      {
        name: "each",
        type: "http",
        params: { url: "https://api.example.com/{{ item }}" },
        forEach: "{{ input.ids }}",
        allowFailures: "10%",
        failFast: true,
        rateLimit: { key: "api", per: "1s", limit: 5 },
      },
    ],
  });
  assert.deepEqual(p.document(), {
    name: "data-import",
    concurrency: { key: "import-{{ input.source }}" },
    output: { rows: "{{ tasks.transform.output }}" },
    tasks: [
      { name: "import-data", type: "worker", task: "data-import.import-data" },
      { name: "transform", type: "worker", task: "data-import.transform", needs: ["import-data"] },
      {
        name: "wait",
        type: "sleep",
        duration: "1s",
        needs: ["import-data", "transform"],
        concurrency: { key: "{{ input.tenant }}", limit: 2 },
      },
      {
        name: "each",
        type: "http",
        url: "https://api.example.com/{{ item }}",
        needs: ["import-data", "transform", "wait"],
        rate_limit: { key: "api", per: "1s", limit: 5 },
        for_each: "{{ input.ids }}",
        allow_failures: "10%",
        fail_fast: true,
      },
    ],
  });
  const w = worker();
  p.attach(w);
  assert.deepEqual([...w.tasks.keys()], ["data-import.import-data", "data-import.transform"]);
  assert.throws(() => definePipeline({ name: "x", tasks: [{ name: "t" }] }), /either a handler or a type/);
});

test("the CommonJS build exports the same API", () => {
  const require = createRequire(import.meta.url);
  const cjs = require("@orbit/sdk");
  assert.equal(typeof cjs.createWorker, "function");
  assert.equal(typeof cjs.OrbitClient, "function");
  assert.ok(new OrbitClient({ url: "http://127.0.0.1:1/" }).url.endsWith(":1"));
});

test("calls about an attempt carry its traceparent (the orchestrator's spans join the run's trace)", async () => {
  const { createServer } = await import("node:http");
  const seen = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url, traceparent: req.headers.traceparent, authorization: req.headers.authorization });
    res.setHeader("content-type", "application/json");
    res.end("{}");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;
  const w = createWorker({ orchestratorUrl: url, serviceId: "unit", secretKey: "unit-test-key-0123456789" });
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  try {
    await w.taskCall("/api/v1/heartbeat", { token: "task-token", traceparent, taskRunId: "t" }, { taskRunId: "t" });
    await w.call("/api/v1/worker/heartbeat", "service-token", {});
  } finally {
    server.close();
  }
  assert.deepEqual(seen, [
    { url: "/api/v1/heartbeat", traceparent, authorization: "Bearer task-token" },
    { url: "/api/v1/worker/heartbeat", traceparent: undefined, authorization: "Bearer service-token" },
  ]);
});
