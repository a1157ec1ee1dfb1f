// The checkout service of examples/worker (Rust) in TypeScript: `route` picks express or
// standard shipping (the other branch is skipped), `payment` is idempotent per order and code
// version, `report` reports its progress. The pipeline is examples/worker/pipeline.yaml.
import { createWorker, FatalError, type Worker } from "@orbit/sdk";

export function service(orchestratorUrl: string, secretKey: string): Worker {
  const worker = createWorker({ orchestratorUrl, serviceId: "shop", secretKey, concurrency: 8, version: "0.1.0" });

  worker.register("route", { allowedNext: ["express", "standard"] }, async (ctx) => {
    const path = ctx.input.fast ? "express" : "standard";
    ctx.log.info(`routing order to ${path}`);
    return { output: { path }, runNext: [path] };
  });

  worker.register("ship", async (ctx) => {
    const { order, speed } = ctx.input as { order: string; speed: string };
    return { order, shipping: speed, days: speed === "express" ? 1 : 5 };
  });

  worker.register(
    "payment",
    { idempotencyKey: (input, codeVersion) => `v${codeVersion}-${input.orderId}`, retries: 3 },
    async (ctx) => {
      const { orderId, amount = 0 } = ctx.input as { orderId?: string; amount?: number };
      if (!orderId) throw new FatalError("input has no `orderId`");
      if (amount < 0) throw new FatalError(`refusing a negative amount ${amount}`);
      ctx.log.info(`charging ${amount} for ${orderId} (code v${ctx.codeVersion}, provider key ${ctx.effectKey})`);
      return { order: orderId, charged: amount, receipt: `rcpt-${orderId}` };
    },
  );

  worker.register("report", async (ctx) => {
    const steps = Math.min(100, Math.max(1, Number(ctx.input.steps ?? 4)));
    for (let i = 1; i <= steps; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await ctx.progress(i / steps, `step ${i} of ${steps}`);
    }
    return { steps, receipt: ctx.upstream.payment?.receipt ?? null };
  });

  return worker;
}
