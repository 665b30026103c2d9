#!/usr/bin/env node
// The command line as one CommonJS file, dist/cli.cjs, which bin/predump.js loads: part of
// `npm run build:ts`, after tsc has compiled ts/ into dist/.
//
// Why (docs/STARTUP.md): Node 20 loads an ES module graph through its ESM loader, whose own
// internal modules, resolution and linking cost about 11 ms of CPU on every run of the
// 20-odd modules of a pre-dump (and 17 ms of wall time), more than the modules themselves.
// One CommonJS file is loaded by require() alone. Nothing else changes: a command's module
// is still evaluated only when that command runs (esbuild turns each `import()` of our own
// modules into a lazy initialiser inside the file); yargs (ESM only, loaded for --help and
// mistakes) and protobufjs (loaded to decode images) stay outside, loaded where they were.
// dist/index.js, the API, stays the ES modules tsc wrote.
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/cli.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['yargs', 'protobufjs'],
  // native.ts finds the package from its own place: dist/cli.cjs is one directory down,
  // as dist/native.js is.
  define: { 'import.meta.url': '__predumpModuleUrl' },
  banner: { js: "const __predumpModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
});
