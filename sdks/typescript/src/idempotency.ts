// A function-valued idempotency key (`(input, codeVersion) => \`v${codeVersion}-${input.orderId}\``)
// is turned into the template the orchestrator evaluates before anything runs, by calling it
// once with stand-ins that print as the template's expressions.

const MARK = "\u0000orbit:";

function standIn(path: string): any {
  const target = function () {};
  return new Proxy(target, {
    get(_t, prop) {
      if (prop === Symbol.toPrimitive || prop === "toString" || prop === "valueOf") return () => `${MARK}${path}\u0000`;
      if (typeof prop === "symbol") return undefined;
      return standIn(/^[A-Za-z_][A-Za-z0-9_]*$/.test(prop) ? `${path}.${prop}` : `${path}[${JSON.stringify(prop)}]`);
    },
  });
}

export function keyTemplate(key: string | ((input: any, codeVersion: any) => string)): string {
  if (typeof key === "string") return key;
  let made: unknown;
  try {
    made = key(standIn("input"), standIn("code_version"));
  } catch (e) {
    throw new Error(`idempotencyKey: the function must only build a string from the input and the code version (${(e as Error).message})`);
  }
  if (typeof made !== "string") {
    throw new Error("idempotencyKey: the function must return a string built from the input and the code version");
  }
  return made.replace(/\u0000orbit:([^\u0000]*)\u0000/g, "{{ $1 }}");
}
