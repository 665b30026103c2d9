#!/usr/bin/env node
// The npx entry point: the compiled CLI lives in dist/ (built by `npm install` in a
// clone, shipped in the package). Loading it loads the addon for this machine: where
// that fails (another platform, the platform package left out), say why and stop,
// without a stack trace.
//
// This file and dist/cli.cjs are CommonJS (bin/package.json; scripts/bundle-cli.mjs):
// Node 20 starts a CommonJS program without its ESM loader, about 11 ms of CPU less on
// every run (docs/STARTUP.md).
'use strict';

// Node 22.1+ keeps the compiled code of the CLI between runs (in its own cache
// directory); Node 20 has no such cache and goes on without it.
require('node:module').enableCompileCache?.();

/** The CLI's main(): the bundle, or where it was not made (a bare `tsc`), the modules. */
async function load() {
  try {
    return require('../dist/cli.cjs');
  } catch (err) {
    if (err?.code !== 'MODULE_NOT_FOUND' || !err.message.includes('dist/cli.cjs')) throw err;
    return import('../dist/cli/main.js');
  }
}

load().then(({ main }) => main(process.argv.slice(2)), fail);

/** A failure to load: the platform or the addon, said without a stack trace. */
function fail(err) {
  if (err?.code !== 'EPLATFORM' && err?.code !== 'ENOADDON') throw err;
  if (process.argv.includes('--json')) {
    process.stdout.write(
      `${JSON.stringify({ version: 1, ok: false, error: { code: err.code, message: err.message } })}\n`,
    );
  }
  process.stderr.write(`predump: error: ${err.message}\n`);
  process.exit(1);
}
