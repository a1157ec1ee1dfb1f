// Pipelines in code: the same document a pipeline file holds, with handler tasks backed by the
// worker it is attached to. Saved on the server when the worker starts (a new version only
// when it changed).
import type { Handler, TaskOptions } from "./types.js";
import type { Worker } from "./worker.js";

export interface RetryPolicy {
  max_attempts?: number;
  initial?: string;
  factor?: number;
  max_delay?: string;
  jitter?: boolean;
}

/** A task: a handler run by this worker, or a built-in `type` with its parameters. */
export interface PipelineTask {
  name: string;
  needs?: string | string[];
  handler?: Handler;
  /** Options of the handler's registration (code version, idempotency key…). */
  options?: TaskOptions;
  /** A built-in type; `pipeline` runs another pipeline as a sub-run
   * (`params: { pipeline: "resize", input: {...} }`) and outputs what it outputs. */
  type?: "shell" | "http" | "sleep" | "wait" | "approval" | "script" | "worker" | "pipeline";
  params?: Record<string, unknown>;
  retry?: RetryPolicy;
  timeout?: string;
  priority?: number;
  allowedNext?: string[];
  /** At most `limit` attempts of tasks with the same rendered `key` run at once, on every
   * worker (the key may use `input` and `run`: `"{{ input.customerId }}"`). Without `limit`,
   * the key's named limit (`orbit limits set KEY N`) applies. */
  concurrency?: { key: string; limit?: number };
  /** At most `limit` attempts of tasks with the same rendered `key` start in any `per` (a
   * duration such as `"1s"`; a token bucket shared by every worker). */
  rateLimit?: { key: string; per: string; limit: number };
  /** Run once per element of the list this template renders to
   * (`"{{ tasks.list.output.items }}"`): a built-in task sees `item` and `index`, a handler gets
   * the element as its input; what needs the task gets the children's outputs in order. */
  forEach?: string;
  /** With `forEach`: the share of children that may fail (`"10%"`), `null` in the list. */
  allowFailures?: string | number;
  /** With `forEach`: cancel the children not started once more have failed than allowed. */
  failFast?: boolean;
}

export interface PipelineSpec {
  name: string;
  description?: string;
  schedule?: string;
  /** At most `limit` runs with the same rendered `key` run at once; the others wait pending. */
  concurrency?: { key: string; limit?: number };
  /** What a run gives a parent run that runs this pipeline (`type: "pipeline"`): a template
   * over `input`, `tasks` and `run`; by default the outputs of the tasks nothing needs. */
  output?: unknown;
  tasks?: PipelineTask[];
  /** orbit-pipeline's form: steps run one after the other, each seeing the ones before. */
  steps?: Array<Omit<PipelineTask, "needs">>;
}

export interface Pipeline {
  readonly name: string;
  readonly spec: PipelineSpec;
  /** The stored document (the pipeline file format, as JSON); handler tasks are `type: worker`. */
  document(): Record<string, unknown>;
  /** Registers the handlers with `worker` and saves the pipeline when it starts. */
  attach(worker: Worker, options?: { apiToken?: string }): Pipeline;
}

/** The registered task that backs a handler task: `<pipeline>.<task>`. */
export const handlerName = (pipeline: string, task: string) => `${pipeline}.${task}`;

export function definePipeline(spec: PipelineSpec): Pipeline {
  if (!spec.tasks === !spec.steps) throw new Error(`pipeline \`${spec.name}\`: give either \`tasks\` or \`steps\``);
  const tasks: PipelineTask[] =
    // A step needs every step before it: it runs after them and sees all their outputs, as
    // orbit-pipeline's steps saw the context built so far.
    spec.tasks ?? (spec.steps ?? []).map((s, i, all) => (i === 0 ? { ...s } : { ...s, needs: all.slice(0, i).map((p) => p.name) }));
  for (const t of tasks) {
    if (!t.handler === !t.type) throw new Error(`pipeline \`${spec.name}\`, task \`${t.name}\`: give either a handler or a type`);
  }
  const pipeline: Pipeline = {
    name: spec.name,
    spec,
    document() {
      const doc: Record<string, unknown> = { name: spec.name };
      if (spec.description !== undefined) doc.description = spec.description;
      if (spec.schedule !== undefined) doc.schedule = spec.schedule;
      if (spec.concurrency !== undefined) doc.concurrency = spec.concurrency;
      if (spec.output !== undefined) doc.output = spec.output;
      doc.tasks = tasks.map((t) => {
        const out: Record<string, unknown> = { name: t.name };
        if (t.handler) {
          out.type = "worker";
          out.task = handlerName(spec.name, t.name);
        } else {
          out.type = t.type;
          Object.assign(out, t.params ?? {});
        }
        if (t.needs !== undefined) out.needs = t.needs;
        if (t.retry !== undefined) out.retry = t.retry;
        if (t.timeout !== undefined) out.timeout = t.timeout;
        if (t.priority !== undefined) out.priority = t.priority;
        if (t.allowedNext !== undefined) out.allowed_next = t.allowedNext;
        if (t.concurrency !== undefined) out.concurrency = t.concurrency;
        if (t.rateLimit !== undefined) out.rate_limit = t.rateLimit;
        if (t.forEach !== undefined) out.for_each = t.forEach;
        if (t.allowFailures !== undefined) out.allow_failures = t.allowFailures;
        if (t.failFast !== undefined) out.fail_fast = t.failFast;
        return out;
      });
      return doc;
    },
    attach(worker, options = {}) {
      for (const t of tasks) {
        if (t.handler) {
          worker.register(handlerName(spec.name, t.name), { allowedNext: t.allowedNext, ...(t.options ?? {}) }, t.handler);
        }
      }
      const token = options.apiToken ?? process.env.ORBIT_API_TOKEN;
      worker.hooks.push(async (w) => {
        const res = await fetch(w.resolve("/api/v1/pipelines"), {
          method: "POST",
          headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
          body: JSON.stringify(pipeline.document()),
        });
        if (!res.ok) throw new Error(`saving pipeline \`${spec.name}\`: ${res.status} ${await res.text()}`);
      });
      return pipeline;
    },
  };
  return pipeline;
}
