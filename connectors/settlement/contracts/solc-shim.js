#!/usr/bin/env node
// Minimal `solc` command-line stand-in backed by solc-js, so that forge and
// Slither (crytic-compile) run offline with the pinned compiler from
// infra/chain/node_modules. Supports only what those tools use:
//   solc --version
//   solc --standard-json [--base-path P] [--include-path P]... [--allow-paths P]   (JSON on stdin)
// Anything else exits with status 2.
'use strict';
const fs = require('fs');
const path = require('path');
const { chainModules, loadSolc, makeImportCallback } = require('./solc-common.js');

const args = process.argv.slice(2);
const solc = loadSolc();

if (args.includes('--version') || args.includes('-v')) {
  // Same shape as the native binary; tools parse the "Version:" line.
  process.stdout.write('solc, the solidity compiler commandline interface\n');
  process.stdout.write(`Version: ${solc.version()}\n`);
  process.exit(0);
}

if (!args.includes('--standard-json')) {
  process.stderr.write(`solc-shim: unsupported arguments: ${args.join(' ')}\n`);
  process.exit(2);
}

// Collect path options (used only to resolve imports that were not inlined).
const roots = [process.cwd()];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--base-path' || args[i] === '--include-path') {
    if (args[i + 1]) roots.push(path.resolve(args[i + 1]));
    i++;
  }
}
roots.push(chainModules());

const input = fs.readFileSync(0, 'utf8');
const output = solc.compile(input, { import: makeImportCallback(roots) });
process.stdout.write(output);
process.stdout.write('\n');
