export { createWorker, Worker, OrbitError, type WorkerOptions, type RegisteredTask } from "./worker.js";
export { runLocal, type LocalRun, type LocalResult } from "./local.js";
export { definePipeline, handlerName, type Pipeline, type PipelineSpec, type PipelineTask, type RetryPolicy } from "./pipeline.js";
export { OrbitClient, type ClientOptions, type TriggerOptions, type RunRecord, type RunDetail, type RunPage, type Triggered, type Retried, type KeyUsage, type Signalled, type TaskRunRecord, type Rerun, type WhyAnswer, type Timeline, type DecisionOptions, type RerunOptions } from "./client.js";
export { FatalError, RetryAfterError, type Assignment, type Handler, type Json, type Logger, type SignalSent, type TaskContext, type TaskOptions, type TaskResult } from "./types.js";
export { codeHash } from "./hash.js";
export { keyTemplate } from "./idempotency.js";
export type { components, paths } from "./api.js";
