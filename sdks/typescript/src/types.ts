// The worker protocol's shapes (docs/worker-protocol.md) and what a handler sees and returns.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** An attempt handed to this worker. */
export interface Assignment {
  taskRunId: string;
  runId: string;
  pipeline: string;
  task: string;
  serviceTask: string;
  attempt: number;
  codeVersion: number;
  input: Json;
  upstream: Record<string, Json>;
  objects?: Record<string, string>;
  outputThreshold?: number;
  effectKey: string;
  heartbeatIntervalMs: number;
  timeoutMs?: number;
  token: string;
  /** The attempt's W3C trace context. */
  traceparent?: string;
}

export interface Logger {
  info(...parts: unknown[]): void;
  warn(...parts: unknown[]): void;
  error(...parts: unknown[]): void;
}

/** What a handler gets. */
export interface TaskContext<I = any> {
  /** The task's input (large values already fetched from object storage). */
  input: I;
  /** Outputs of the upstream tasks, by task name. */
  upstream: Record<string, any>;
  runId: string;
  taskRunId: string;
  /** The pipeline task's name (a registered task can back several). */
  task: string;
  /** Attempts count from 1. */
  attempt: number;
  codeVersion: number;
  /** The same for every attempt of this task run: pass it on as an idempotency key. */
  effectKey: string;
  /** The attempt's W3C `traceparent` (the run's trace): pass it on to continue the trace. */
  traceparent?: string;
  /** Lines reach the attempt's log (`orbit logs`, the dashboard). */
  log: Logger;
  /** Records progress (0..1) and renews the lease. */
  progress(fraction: number, message?: string): Promise<void>;
  /**
   * Sends Orbit signal `name` (what `orbit signal` and `POST /signals/{name}` send): every `wait`
   * task parked on it gets `payload` as its output; with none waiting yet, it is kept (`ttl`,
   * 24h by default) for the first that waits. (`signal` is the attempt's AbortSignal, as Node
   * APIs name it.)
   */
  sendSignal(name: string, payload?: unknown, options?: { ttl?: string }): Promise<SignalSent>;
  /** Aborted when the attempt's lease is lost or it times out: stop, nothing you send counts. */
  signal: AbortSignal;
}

/** What sending a signal did. */
export interface SignalSent {
  /** The `wait` tasks it woke, each once. */
  delivered: { runId: string; task: string }[];
  /** None waited: it is kept for the first that does. */
  kept: boolean;
}

/** A result that also chooses which of the task's `allowedNext` run. */
export interface TaskResult<O = unknown> {
  output: O;
  runNext?: string[];
}

export type Handler<I = any, O = any> = (ctx: TaskContext<I>) => Promise<O | TaskResult<O>> | O | TaskResult<O>;

export interface TaskOptions {
  /** The tasks this one may choose among with `runNext`. */
  allowedNext?: string[];
  /**
   * A succeeded attempt with the same key (within the server's TTL) lends its output instead of
   * running: a template such as `v{{ code_version }}-{{ input.orderId }}`, or a function of the
   * input and the code version that builds a string from them (it is turned into that template).
   */
  idempotencyKey?: string | ((input: any, codeVersion: any) => string);
  /** Retries after the first attempt (the pipeline's policy when absent). */
  retries?: number;
  timeoutMs?: number;
  heartbeatIntervalMs?: number;
  /** An explicit code version instead of the hash of the handler's source. */
  codeVersion?: string;
}

/** Throw it for a failure retrying cannot fix: the task goes to the dead-letter queue at once. */
export class FatalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FatalError";
  }
}

/** Throw it when the task should be tried again after `afterMs` (a quota, an upstream's
 * `Retry-After`): it waits that long and does not spend one of its retries. */
export class RetryAfterError extends Error {
  readonly afterMs: number;
  constructor(message: string, afterMs: number) {
    super(message);
    this.name = "RetryAfterError";
    this.afterMs = Math.max(0, Math.round(afterMs));
  }
}
