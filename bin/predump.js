#!/usr/bin/env node
// The npx entry point: the compiled CLI lives in dist/ (built by `npm install`).
import { main } from '../dist/cli/main.js';

await main(process.argv.slice(2));
