// Large inputs and outputs move between the worker and object storage directly: a reference
// (`{"$orbit_object": {backend, key, size}}`) in the input or an upstream output is fetched
// from the URL the assignment grants for it; an output over the server's threshold is PUT to a
// URL granted for this attempt's own object, and the callback carries only the reference.
import type { Assignment, Json } from "./types.js";
import type { Worker } from "./worker.js";

interface ObjectRef {
  backend: string;
  key: string;
  size: number;
}

function reference(value: Json): ObjectRef | undefined {
  if (!value || typeof value !== "object" || Array.isArray(value)) return undefined;
  const keys = Object.keys(value);
  const inner = (value as Record<string, Json>)["$orbit_object"];
  if (keys.length !== 1 || !inner || typeof inner !== "object" || Array.isArray(inner)) return undefined;
  const r = inner as Record<string, Json>;
  return typeof r.backend === "string" && typeof r.key === "string" ? { backend: r.backend, key: r.key, size: Number(r.size ?? 0) } : undefined;
}

async function fetchValue(worker: Worker, a: Assignment, value: Json): Promise<Json> {
  const r = reference(value);
  if (!r) return value;
  const id = `${r.backend}/${r.key}`;
  const url = a.objects?.[id];
  if (!url) throw new Error(`the assignment grants no access to object \`${id}\``);
  const res = await fetch(worker.resolve(url));
  if (!res.ok) throw new Error(`reading object \`${id}\` was refused: ${res.status}`);
  return (await res.json()) as Json;
}

export async function hydrate(worker: Worker, a: Assignment): Promise<{ input: Json; upstream: Record<string, Json> }> {
  const input = await fetchValue(worker, a, a.input);
  const upstream: Record<string, Json> = {};
  for (const [name, value] of Object.entries(a.upstream ?? {})) upstream[name] = await fetchValue(worker, a, value);
  return { input, upstream };
}

export async function storeOutput(worker: Worker, a: Assignment, output: Json): Promise<Json> {
  if (a.outputThreshold === undefined) return output;
  const body = JSON.stringify(output ?? null);
  if (Buffer.byteLength(body) <= a.outputThreshold && !reference(output)) return output;
  const grant = (await worker.taskCall("/api/v1/grant", a, { taskRunId: a.taskRunId })) as {
    url: string;
    reference: ObjectRef;
  };
  const res = await fetch(worker.resolve(grant.url), {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body,
  });
  if (!res.ok) throw new Error(`storing the output was refused: ${res.status} ${await res.text()}`);
  return { $orbit_object: { ...grant.reference } } as unknown as Json;
}
