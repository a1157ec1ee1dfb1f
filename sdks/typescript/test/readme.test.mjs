// Every TypeScript block of the SDK's README type-checks against the built SDK, and the local
// testing example runs and prints what the README says.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { test } from "node:test";

const here = new URL("..", import.meta.url);
const blocks = [...readFileSync(new URL("README.md", here), "utf8").matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);

test("the README's TypeScript examples type-check", () => {
  assert.ok(blocks.length >= 4, `${blocks.length} blocks`);
  const dir = new URL("build-readme/", here);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  blocks.forEach((b, i) => writeFileSync(new URL(`block${i}.ts`, dir), `${b}\nexport {};\n`));
  writeFileSync(
    new URL("tsconfig.json", dir),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true,
        skipLibCheck: true, types: ["node"], typeRoots: ["../node_modules/@types"],
      },
      include: ["*.ts"],
    }),
  );
  execFileSync("npx", ["tsc", "-p", new URL("tsconfig.json", dir).pathname], { cwd: here, stdio: "inherit" });
});

test("the local testing example prints what the README says", () => {
  const block = blocks.find((b) => b.includes("runLocal(worker"));
  const js = block.replace(/: any/g, "");
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", js], { cwd: here }).toString();
  assert.equal(out.trim(), "{ text: 'HI' }");
});
