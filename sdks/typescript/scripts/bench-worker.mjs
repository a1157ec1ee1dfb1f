// `orbit bench --sdk typescript`: a worker service whose one task, `noop`, returns at once.
//   node scripts/bench-worker.mjs --url URL --concurrency N [--push]   (ORBIT_SECRET_KEY set)
import { createWorker } from "@orbit/sdk";

const arg = (name) => process.argv[process.argv.indexOf(name) + 1];
const worker = createWorker({
  orchestratorUrl: arg("--url"),
  serviceId: "bench",
  secretKey: process.env.ORBIT_SECRET_KEY,
  concurrency: Number(arg("--concurrency") ?? 64),
});
worker.register("noop", { codeVersion: "1" }, () => null);
if (process.argv.includes("--push")) await worker.listen(0);
else await worker.start();
