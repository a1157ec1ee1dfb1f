// HS256 JSON Web Tokens with Node's own crypto: the worker signs its service token and checks
// the task tokens the orchestrator pushes to it.
import { createHmac, timingSafeEqual } from "node:crypto";

const b64url = (data: Buffer | string) => Buffer.from(data).toString("base64url");

export function sign(claims: Record<string, unknown>, secret: string): string {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const mac = createHmac("sha256", secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(mac)}`;
}

/** The claims of `token` if its signature, audience and expiry hold; otherwise throws. */
export function verify(token: string, secret: string, audience: string): Record<string, unknown> {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("not a JWT");
  const [head, body, mac] = parts as [string, string, string];
  const header = JSON.parse(Buffer.from(head, "base64url").toString("utf8"));
  if (header.alg !== "HS256") throw new Error(`unexpected algorithm ${header.alg}`);
  const want = createHmac("sha256", secret).update(`${head}.${body}`).digest();
  const got = Buffer.from(mac, "base64url");
  if (got.length !== want.length || !timingSafeEqual(got, want)) throw new Error("bad signature");
  const claims = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
  if (claims.aud !== audience) throw new Error(`token is for ${claims.aud}, not ${audience}`);
  if (typeof claims.exp !== "number" || claims.exp + 5 < Date.now() / 1000) throw new Error("token expired");
  return claims;
}
