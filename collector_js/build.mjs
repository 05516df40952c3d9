// Build c.js: minify the readable source into the file the gateway serves, with its gzip and
// brotli forms. `node build.mjs --check` rebuilds in memory and fails when the committed files
// differ or the script is over its size budget (CI runs it).
import { build } from 'esbuild';
import { readFileSync, writeFileSync } from 'node:fs';
import { gzipSync, brotliCompressSync, constants } from 'node:zlib';

const BUDGET_GZIP_BYTES = 1536;
const OUT = new URL('../gateway/static/c.js', import.meta.url);
const check = process.argv.includes('--check');

const result = await build({
  entryPoints: [new URL('./src/c.js', import.meta.url).pathname],
  bundle: false,
  minify: true,
  target: 'es2017',
  format: 'iife',
  legalComments: 'none',
  write: false,
});
const code = Buffer.from(result.outputFiles[0].text);
const gz = gzipSync(code, { level: 9 });
const br = brotliCompressSync(code, {
  params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: code.length },
});
console.log(`c.js: ${code.length} bytes, ${gz.length} gzipped, ${br.length} brotli `
  + `(budget ${BUDGET_GZIP_BYTES} gzipped)`);
let failed = false;
if (gz.length > BUDGET_GZIP_BYTES) {
  console.error(`c.js is over its budget: ${gz.length} > ${BUDGET_GZIP_BYTES} bytes gzipped`);
  failed = true;
}
if (check) {
  let committed = Buffer.alloc(0);
  try { committed = readFileSync(OUT); } catch { /* missing counts as different */ }
  if (!committed.equals(code)) {
    console.error('gateway/static/c.js differs from a fresh build: run `npm run build` and commit');
    failed = true;
  }
} else {
  writeFileSync(OUT, code);
  writeFileSync(new URL('c.js.gz', OUT), gz);
  writeFileSync(new URL('c.js.br', OUT), br);
}
process.exit(failed ? 1 : 0);
