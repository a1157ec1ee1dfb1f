// Running a handler in this process, with no orchestrator and no database: the same context
// (attempt 1, code version 0; log lines and progress go to stderr), so a test or a debugger
// with breakpoints sees exactly what the handler does.
import { randomUUID } from "node:crypto";
import type { TaskResult } from "./types.js";
import { asResult, logger, type Worker } from "./worker.js";

export interface LocalRun {
  input?: unknown;
  upstream?: Record<string, unknown>;
}

export interface LocalResult<O = any> extends TaskResult<O> {
  /** The lines the handler logged. */
  logs: string[];
}

/** Runs the handler registered as `task` here; checks `runNext` against its `allowedNext`. */
export async function runLocal<O = any>(worker: Worker, task: string, run: LocalRun = {}): Promise<LocalResult<O>> {
  const registered = worker.tasks.get(task);
  if (!registered) throw new Error(`no task \`${task}\` is registered (registered: ${[...worker.tasks.keys()].join(", ") || "none"})`);
  const logs: string[] = [];
  const abort = new AbortController();
  const result = asResult(
    await registered.handler({
      input: run.input ?? {},
      upstream: run.upstream ?? {},
      runId: "local",
      taskRunId: randomUUID(),
      task,
      attempt: 1,
      codeVersion: 0,
      effectKey: `local-${task}`,
      log: logger(logs),
      progress: async (fraction, message) => {
        process.stderr.write(`[progress ${Math.round(fraction * 100)}%] ${message ?? ""}\n`);
      },
      // No orchestrator here: the signal is shown, and nothing waits for it.
      sendSignal: async (name, payload = null) => {
        process.stderr.write(`[signal ${name}] ${JSON.stringify(payload)}\n`);
        return { delivered: [], kept: false };
      },
      signal: abort.signal,
    }),
  );
  for (const line of logs) process.stderr.write(`${line}\n`);
  const allowed = registered.options.allowedNext ?? [];
  for (const next of result.runNext ?? []) {
    if (!allowed.includes(next)) throw new Error(`run_next names \`${next}\`, not in allowed_next [${allowed.join(", ")}]`);
  }
  return { ...(result as TaskResult<O>), logs };
}
