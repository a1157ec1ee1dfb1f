// A worker service: registers its handlers with `orbit server`, then runs the attempts it is
// given, by long-poll (`start`, works behind NAT) or by push (`listen`, for serverless
// platforms). The wire protocol is docs/worker-protocol.md.
import { createServer, type Server } from "node:http";
import { hostname } from "node:os";
import { codeHash } from "./hash.js";
import { keyTemplate } from "./idempotency.js";
import { sign, verify } from "./jwt.js";
import { hydrate, storeOutput } from "./objects.js";
import { FatalError, RetryAfterError, type Assignment, type Handler, type Json, type Logger, type SignalSent, type TaskContext, type TaskOptions, type TaskResult } from "./types.js";

export interface WorkerOptions {
  /** Where `orbit server` listens, e.g. `http://127.0.0.1:3000` (PIPEWEAVE_ORCHESTRATOR_URL / ORBIT_URL when absent). */
  orchestratorUrl?: string;
  serviceId: string;
  /** The key the server signs with (ORBIT_SECRET_KEY / PIPEWEAVE_SECRET_KEY when absent). */
  secretKey?: string;
  /** Attempts run at once (default 4). */
  concurrency?: number;
  /** The service's version, shown with its registration. */
  version?: string;
  /** How long a stop lets running handlers finish before handing their attempts back (default 30 s). */
  graceMs?: number;
}

export interface RegisteredTask {
  name: string;
  handler: Handler;
  options: TaskOptions;
  codeHash: string;
}

/** Creates a worker service (the PipeWeave SDK's `createWorker`). */
export function createWorker(options: WorkerOptions): Worker {
  return new Worker(options);
}

/** Thrown by a callback or request the orchestrator refused. */
export class OrbitError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly body: unknown,
  ) {
    super(message);
    this.name = "OrbitError";
  }
}

export class Worker {
  readonly serviceId: string;
  readonly workerId: string;
  readonly orchestratorUrl: string;
  readonly concurrency: number;
  readonly tasks = new Map<string, RegisteredTask>();
  /** Called with what this worker registered (also the pipelines in code it saved). */
  readonly hooks: Array<(w: Worker) => Promise<void>> = [];
  private readonly secret: string;
  private readonly version?: string;
  private readonly graceMs: number;
  private running = new Map<string, { abort: AbortController; a: Assignment }>();
  private stopping = false;
  private stopped?: () => void;
  private wake?: () => void;
  private server?: Server;
  private tokenCache?: { token: string; until: number };

  constructor(o: WorkerOptions) {
    const url = o.orchestratorUrl ?? process.env.ORBIT_URL ?? process.env.PIPEWEAVE_ORCHESTRATOR_URL;
    const secret = o.secretKey ?? process.env.ORBIT_SECRET_KEY ?? process.env.PIPEWEAVE_SECRET_KEY;
    if (!url) throw new Error("orchestratorUrl is required (or set ORBIT_URL)");
    if (!secret || secret.length < 16) throw new Error("secretKey must be the server's ORBIT_SECRET_KEY (at least 16 characters)");
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(o.serviceId ?? "")) throw new Error("serviceId: 1 to 128 letters, digits, - _ .");
    this.orchestratorUrl = url.replace(/\/+$/, "");
    this.secret = secret;
    this.serviceId = o.serviceId;
    this.concurrency = Math.max(1, o.concurrency ?? 4);
    this.version = o.version;
    this.graceMs = o.graceMs ?? 30_000;
    this.workerId = `${o.serviceId}@${hostname()}:${process.pid}`;
  }

  /** Registers a handler: `register(name, handler)` or `register(name, options, handler)`. */
  register<I = any, O = any>(name: string, handler: Handler<I, O>): this;
  register<I = any, O = any>(name: string, options: TaskOptions, handler: Handler<I, O>): this;
  register(name: string, a: TaskOptions | Handler, b?: Handler): this {
    const [options, handler] = typeof a === "function" ? [{}, a] : [a, b];
    if (typeof handler !== "function") throw new Error(`register("${name}"): a handler function is required`);
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(name)) throw new Error(`register("${name}"): a name is 1 to 128 letters, digits, - _ .`);
    if (options.idempotencyKey !== undefined) keyTemplate(options.idempotencyKey);
    this.tasks.set(name, {
      name,
      handler,
      options,
      codeHash: options.codeVersion !== undefined ? `version:${options.codeVersion}` : codeHash(handler),
    });
    return this;
  }

  /** The registration body (docs/worker-protocol.md §1). */
  registration(url?: string) {
    return {
      serviceId: this.serviceId,
      workerId: this.workerId,
      version: this.version,
      url,
      concurrency: this.concurrency,
      tasks: [...this.tasks.values()].map((t) => ({
        name: t.name,
        codeHash: t.codeHash,
        allowedNext: t.options.allowedNext ?? [],
        idempotencyKey: t.options.idempotencyKey === undefined ? undefined : keyTemplate(t.options.idempotencyKey),
        retries: t.options.retries,
        timeoutMs: t.options.timeoutMs,
        heartbeatIntervalMs: t.options.heartbeatIntervalMs,
      })),
    };
  }

  /** Registers with the orchestrator; returns each task's code version. */
  async registerWithServer(url?: string): Promise<Array<{ name: string; codeVersion: number; changed: boolean }>> {
    for (const hook of this.hooks) await hook(this);
    const r = (await this.call("/api/v1/services/register", this.serviceToken(), this.registration(url))) as {
      tasks: Array<{ name: string; codeVersion: number; changed: boolean }>;
    };
    return r.tasks;
  }

  /**
   * Pull mode: registers, then long-polls for work until `stop()` (or SIGTERM); running
   * handlers are let finish (up to the grace), the others handed back.
   */
  async start(): Promise<void> {
    await this.registerWithServer();
    const onTerm = () => void this.stop();
    process.once("SIGTERM", onTerm);
    const beat = setInterval(() => void this.workerHeartbeat(), 5000);
    let backoff = 200;
    try {
      while (!this.stopping) {
        const free = this.concurrency - this.running.size;
        if (free <= 0) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          continue;
        }
        let tasks: Assignment[];
        try {
          const r = (await this.call(
            "/api/v1/worker/poll",
            this.serviceToken(),
            { workerId: this.workerId, max: free, waitMs: 20_000 },
            this.pollAbort.signal,
          )) as { tasks: Assignment[] };
          tasks = r.tasks;
          backoff = 200;
        } catch (e) {
          if (this.stopping) break;
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 10_000);
          // The orchestrator may have lost its database: say who we are again.
          await this.registerWithServer().catch(() => undefined);
          continue;
        }
        for (const a of tasks) void this.execute(a);
      }
    } finally {
      clearInterval(beat);
      process.removeListener("SIGTERM", onTerm);
      await this.drain();
    }
  }

  /**
   * Push mode: serves `POST /orbit/task` on `port` (the orchestrator sends each attempt there
   * with its task token) and registers with `publicUrl` (how the orchestrator reaches this
   * worker; `http://127.0.0.1:<port>/orbit/task` by default). Resolves once listening.
   */
  async listen(port = 8080, publicUrl?: string): Promise<Server> {
    const server = createServer((req, res) => void this.accept(req, res));
    await new Promise<void>((resolve) => server.listen(port, resolve));
    const address = server.address();
    const bound = typeof address === "object" && address ? address.port : port;
    this.server = server;
    await this.registerWithServer(publicUrl ?? `http://127.0.0.1:${bound}/orbit/task`);
    const beat = setInterval(() => void this.workerHeartbeat(), 5000);
    const onTerm = () => void this.stop();
    process.once("SIGTERM", onTerm);
    server.on("close", () => {
      clearInterval(beat);
      process.removeListener("SIGTERM", onTerm);
    });
    return server;
  }

  /** Stops taking work; lets running handlers finish within the grace, hands the rest back. */
  async stop(): Promise<void> {
    if (this.stopping) return this.drain();
    this.stopping = true;
    this.pollAbort.abort();
    this.wake?.();
    this.server?.close();
    await this.drain();
  }

  private pollAbort = new AbortController();

  private async drain(): Promise<void> {
    if (!this.running.size) return;
    await new Promise<void>((resolve) => {
      this.stopped = resolve;
      setTimeout(resolve, this.graceMs).unref();
    });
    // Grace is over: what still runs is handed back, to be retried elsewhere at once.
    await Promise.all(
      [...this.running.values()].map(({ abort, a }) => {
        abort.abort(new Error("the worker stopped"));
        this.running.delete(a.taskRunId);
        return this.callback(a, {
          status: "failed",
          error: "the worker stopped before the attempt finished",
          retryable: true,
          logs: [],
        }).catch(() => undefined);
      }),
    );
  }

  private async accept(req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (req.method !== "POST" || req.url !== "/orbit/task") return reply(404, { error: { code: "not_found", message: "POST /orbit/task" } });
    let body = "";
    for await (const chunk of req) body += chunk;
    let a: Assignment;
    try {
      a = JSON.parse(body);
      const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
      const claims = verify(token, this.secret, "orbit-task");
      if (claims.trid !== a.taskRunId || a.token !== token) throw new Error("the token is for another task run");
    } catch (e) {
      return reply(401, { error: { code: "unauthorized", message: (e as Error).message } });
    }
    if (this.stopping) return reply(503, { error: { code: "stopping", message: "this worker is stopping" } });
    reply(202, { ok: true });
    void this.execute(a);
  }

  /** Runs one attempt: heartbeats while the handler runs, then calls back. */
  private async execute(a: Assignment): Promise<void> {
    const abort = new AbortController();
    this.running.set(a.taskRunId, { abort, a });
    const lines: string[] = [];
    let beat: NodeJS.Timeout | undefined;
    let timer: NodeJS.Timeout | undefined;
    let lost = false;
    try {
      const task = this.tasks.get(a.serviceTask);
      if (!task) {
        await this.callback(a, { status: "failed", error: `this worker has no task \`${a.serviceTask}\``, retryable: true, logs: [] });
        return;
      }
      const every = Math.max(100, Math.min(a.heartbeatIntervalMs, task.options.heartbeatIntervalMs ?? Infinity));
      // A 409 from a heartbeat or a progress report: the lease is gone, stop the handler.
      const leaseLost = (e: unknown) => {
        if (e instanceof OrbitError && e.status === 409) {
          lost = true;
          abort.abort(new Error("the attempt's lease was lost"));
        }
      };
      beat = setInterval(() => {
        this.taskCall("/api/v1/heartbeat", a, { taskRunId: a.taskRunId }).catch(leaseLost);
      }, every);
      const timeoutMs = minDefined(a.timeoutMs, task.options.timeoutMs);
      let input: Json, upstream: Record<string, Json>;
      try {
        ({ input, upstream } = await hydrate(this, a));
      } catch (e) {
        await this.callback(a, { status: "failed", error: (e as Error).message, retryable: true, logs: [] });
        return;
      }
      const ctx: TaskContext = {
        input,
        upstream,
        runId: a.runId,
        taskRunId: a.taskRunId,
        task: a.task,
        attempt: a.attempt,
        codeVersion: a.codeVersion,
        effectKey: a.effectKey,
        traceparent: a.traceparent,
        log: logger(lines),
        progress: async (fraction, message) => {
          await this.taskCall("/api/v1/progress", a, { taskRunId: a.taskRunId, progress: fraction, message }).catch(leaseLost);
        },
        sendSignal: async (name, payload = null, options = {}) =>
          (await this.taskCall("/api/v1/worker/signal", a, { taskRunId: a.taskRunId, name, payload, ...options })) as SignalSent,
        signal: abort.signal,
      };
      const stopped = new Promise<never>((_, reject) => {
        abort.signal.addEventListener("abort", () => reject(abort.signal.reason), { once: true });
        if (timeoutMs !== undefined) {
          timer = setTimeout(() => reject(new TimeoutError(timeoutMs)), timeoutMs);
        }
      });
      let result: TaskResult;
      try {
        result = asResult(await Promise.race([Promise.resolve().then(() => task.handler(ctx)), stopped]));
      } catch (e) {
        // Lost, or handed back by a stop (drain calls back for it): nothing to send here.
        if (lost || (this.stopping && abort.signal.aborted)) return;
        if (e instanceof TimeoutError) {
          await this.callback(a, { status: "timeout", error: e.message, retryable: true, logs: lines });
        } else {
          const fatal = e instanceof FatalError || (e as { name?: string })?.name === "FatalError";
          const message = e instanceof Error ? e.message : String(e);
          const retryAfterMs = e instanceof RetryAfterError ? e.afterMs : undefined;
          await this.callback(a, { status: "failed", error: message, retryable: !fatal, retryAfterMs, logs: lines });
        }
        return;
      }
      let output: Json;
      try {
        output = await storeOutput(this, a, result.output as Json);
      } catch (e) {
        await this.callback(a, { status: "failed", error: (e as Error).message, retryable: true, logs: lines });
        return;
      }
      await this.callback(a, { status: "succeeded", output, runNext: result.runNext, retryable: true, logs: lines });
    } catch (e) {
      // A callback that could not be delivered: the lease runs out and the task is retried.
      if (!(e instanceof OrbitError && e.status === 409)) console.error(`orbit: ${a.task}: ${(e as Error).message}`);
    } finally {
      clearInterval(beat);
      clearTimeout(timer);
      if (this.running.delete(a.taskRunId)) {
        this.wake?.();
        this.wake = undefined;
        if (!this.running.size) this.stopped?.();
      }
    }
  }

  private callback(a: Assignment, body: Record<string, unknown>) {
    return this.taskCall(`/api/v1/callback/${a.runId}`, a, { taskRunId: a.taskRunId, output: null, ...body });
  }

  private workerHeartbeat() {
    return this.call("/api/v1/worker/heartbeat", this.serviceToken(), { workerId: this.workerId }).catch(() => undefined);
  }

  /** A service token, minted per five minutes. */
  serviceToken(): string {
    const now = Math.floor(Date.now() / 1000);
    if (!this.tokenCache || this.tokenCache.until < now) {
      const token = sign({ sub: this.serviceId, aud: "orbit-service", iat: now, exp: now + 300 }, this.secret);
      this.tokenCache = { token, until: now + 240 };
    }
    return this.tokenCache.token;
  }

  /** `url` as the orchestrator gave it: absolute (pre-signed) or relative to it. */
  resolve(url: string): string {
    return /^https?:\/\//.test(url) ? url : `${this.orchestratorUrl}${url}`;
  }

  /**
   * A call about attempt `a`, with its task token and its `traceparent`: the orchestrator's
   * span for the call joins the run's trace, under the attempt's.
   */
  taskCall(path: string, a: Assignment, body: unknown): Promise<unknown> {
    return this.call(path, a.token, body, undefined, a.traceparent);
  }

  /** POSTs JSON with a bearer token; the parsed answer, or an OrbitError. */
  async call(path: string, token: string, body: unknown, signal?: AbortSignal, traceparent?: string): Promise<unknown> {
    const headers: Record<string, string> = { "content-type": "application/json", authorization: `Bearer ${token}` };
    if (traceparent) headers.traceparent = traceparent;
    const res = await fetch(this.resolve(path), {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal,
    });
    const text = await res.text();
    const parsed = text ? safeJson(text) : null;
    if (!res.ok) {
      const message = (parsed as { error?: { message?: string } })?.error?.message ?? text;
      throw new OrbitError(`${path}: ${res.status} ${message}`, res.status, parsed);
    }
    return parsed;
  }
}

class TimeoutError extends Error {
  constructor(ms: number) {
    super(`the handler ran past its timeout of ${ms} ms`);
  }
}

/** A handler's return value as a result: `{ output, runNext }` when it has exactly that shape. */
export function asResult(value: unknown): TaskResult {
  if (value && typeof value === "object" && !Array.isArray(value) && "output" in value) {
    const keys = Object.keys(value);
    if (keys.every((k) => k === "output" || k === "runNext")) return value as TaskResult;
  }
  return { output: value === undefined ? null : value };
}

export function logger(lines: string[]): Logger {
  const line = (level: string, parts: unknown[]) =>
    lines.push(`[${level}] ${parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" ")}`);
  return {
    info: (...p) => line("INFO", p),
    warn: (...p) => line("WARN", p),
    error: (...p) => line("ERROR", p),
  };
}

function minDefined(a?: number, b?: number): number | undefined {
  return a === undefined ? b : b === undefined ? a : Math.min(a, b);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
