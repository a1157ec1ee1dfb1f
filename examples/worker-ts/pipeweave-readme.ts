// The worker example of the PipeWeave README, as printed there, with only the import line
// changed: it type-checks against the SDK (npm run typecheck in sdks/typescript).
import { createWorker, TaskResult } from "@orbit/sdk";

const worker = createWorker({
  orchestratorUrl: "http://localhost:3000",
  serviceId: "my-service",
  secretKey: process.env.PIPEWEAVE_SECRET_KEY!,
});

// Simple task
worker.register("process", async (ctx) => {
  const { data } = ctx.input;
  return { processed: true, result: data.toUpperCase() };
});

// Task with programmatic next selection
worker.register(
  "router",
  {
    allowedNext: ["path-a", "path-b"],
  },
  async (ctx): Promise<TaskResult> => {
    if (ctx.input.fast) {
      return { output: { routed: true }, runNext: ["path-a"] };
    }
    return { output: { routed: true }, runNext: ["path-b"] };
  }
);

// Idempotent task
worker.register(
  "payment",
  {
    idempotencyKey: (input, codeVersion) => `v${codeVersion}-${input.orderId}`,
    retries: 3,
  },
  async (ctx) => {
    ctx.log.info(`Processing payment v${ctx.codeVersion}`);
    return { success: true };
  }
);

worker.listen(8080);
