// Serves the shop: `node main.js` long-polls (works behind NAT); `node main.js --push PORT`
// serves the orchestrator's POSTs instead. Needs ORBIT_URL and ORBIT_SECRET_KEY.
import { service } from "./shop.js";

const url = process.env.ORBIT_URL ?? "http://127.0.0.1:3000";
const secret = process.env.ORBIT_SECRET_KEY ?? "";
const worker = service(url, secret);
const push = process.argv.indexOf("--push");
if (push >= 0) {
  const server = await worker.listen(Number(process.argv[push + 1] ?? 8080));
  const address = server.address();
  console.log(`shop: serving pushes on port ${typeof address === "object" && address ? address.port : "?"}`);
} else {
  console.log("shop: polling", url);
  await worker.start();
}
