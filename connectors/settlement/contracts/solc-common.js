'use strict';
// Shared helpers for build.js and solc-shim.js.
const fs = require('fs');
const path = require('path');

// infra/chain/node_modules of this repository (override with XCHG_CHAIN_NODE_MODULES).
function chainModules() {
  return process.env.XCHG_CHAIN_NODE_MODULES
    || path.resolve(__dirname, '..', '..', '..', 'infra', 'chain', 'node_modules');
}

function loadSolc() {
  return require(path.join(chainModules(), 'solc'));
}

// Import callback: try each root in order; `@openzeppelin/...` resolves against
// infra/chain/node_modules.
function makeImportCallback(roots) {
  return function findImports(importPath) {
    const candidates = [];
    if (path.isAbsolute(importPath)) candidates.push(importPath);
    for (const r of roots) candidates.push(path.join(r, importPath));
    for (const c of candidates) {
      try {
        return { contents: fs.readFileSync(c, 'utf8') };
      } catch (_) { /* try next */ }
    }
    return { error: `File not found: ${importPath}` };
  };
}

module.exports = { chainModules, loadSolc, makeImportCallback };
