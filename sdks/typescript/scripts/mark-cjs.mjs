// dist/cjs holds CommonJS: tell Node so, whatever the package's own "type" says.
import { writeFileSync } from "node:fs";
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{"type": "commonjs"}\n');
