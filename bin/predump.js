#!/usr/bin/env node
// The npx entry point: the compiled CLI lives in dist/ (built by `npm install` in a
// clone, shipped in the package). Loading it loads the addon for this machine: where
// that fails (another platform, the platform package left out), say why and stop,
// without a stack trace.
import module from 'node:module';

// Node 22.1+ keeps the compiled code of the CLI's modules between runs (in its own cache
// directory); Node 20 has no such cache and goes on without it.
module.enableCompileCache?.();

let main;
try {
  ({ main } = await import('../dist/cli/main.js'));
} catch (err) {
  if (err?.code !== 'EPLATFORM' && err?.code !== 'ENOADDON') throw err;
  if (process.argv.includes('--json')) {
    process.stdout.write(
      `${JSON.stringify({ ok: false, error: { code: err.code, message: err.message } })}\n`,
    );
  }
  process.stderr.write(`predump: error: ${err.message}\n`);
  process.exit(1);
}

await main(process.argv.slice(2));
