#!/usr/bin/env node
// Compile src/Settlement.sol with the pinned solc-js (standard JSON) and write
// out/Settlement.json = { contractName, abi, bytecode, deployedBytecode, compiler, settings }
// for web3.py to deploy, and out/MockERC20.json (test/mocks/MockERC20.sol: the mintable token
// that `xchg settle deploy` puts on a dev chain). Usage: node build.js [--out DIR]
// The compiler settings match foundry.toml, so the deployed code is the code under test.
'use strict';
const fs = require('fs');
const path = require('path');
const { chainModules, loadSolc, makeImportCallback } = require('./solc-common.js');

const here = __dirname;
const outIdx = process.argv.indexOf('--out');
const outDir = outIdx > 0 ? path.resolve(process.argv[outIdx + 1]) : path.join(here, 'out');

const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  outputSelection: {
    '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'metadata'] },
  },
};

function main() {
  const solc = loadSolc();
  const sourceName = 'src/Settlement.sol';
  const mockName = 'test/mocks/MockERC20.sol';
  const input = {
    language: 'Solidity',
    sources: {
      [sourceName]: { content: fs.readFileSync(path.join(here, sourceName), 'utf8') },
      [mockName]: { content: fs.readFileSync(path.join(here, mockName), 'utf8') },
    },
    settings: SETTINGS,
  };
  // `@openzeppelin/...` resolves against infra/chain/node_modules; relative imports against this folder.
  const findImports = makeImportCallback([here, chainModules()]);
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  let failed = false;
  for (const e of output.errors || []) {
    const msg = e.formattedMessage || e.message;
    // OpenZeppelin's transient-storage reentrancy guard triggers solc's generic EIP-1153 warning;
    // the guard clears its slot at the end of every call, which is the safe use the warning names.
    const file = (e.sourceLocation && e.sourceLocation.file) || '';
    if (e.severity === 'warning' && file.startsWith('@openzeppelin/') && /Transient storage/.test(e.message)) continue;
    if (e.severity === 'error') {
      failed = true;
      process.stderr.write(msg + '\n');
    } else {
      process.stderr.write(msg + '\n');
    }
  }
  if (failed) {
    process.stderr.write('build.js: compilation failed\n');
    process.exit(1);
  }

  const c = output.contracts[sourceName].Settlement;
  const artifact = {
    contractName: 'Settlement',
    sourceName,
    abi: c.abi,
    bytecode: '0x' + c.evm.bytecode.object,
    deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    compiler: { name: 'solc-js', version: solc.version() },
    settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer },
  };
  if (artifact.bytecode.length <= 2) {
    process.stderr.write('build.js: empty bytecode\n');
    process.exit(1);
  }
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, 'Settlement.json');
  fs.writeFileSync(file, JSON.stringify(artifact, null, 2) + '\n');
  const size = (c.evm.deployedBytecode.object.length / 2) | 0;
  const m = output.contracts[mockName].MockERC20;
  const mock = {
    contractName: 'MockERC20',
    sourceName: mockName,
    abi: m.abi,
    bytecode: '0x' + m.evm.bytecode.object,
    compiler: artifact.compiler,
    settings: artifact.settings,
  };
  fs.writeFileSync(path.join(outDir, 'MockERC20.json'), JSON.stringify(mock, null, 2) + '\n');
  process.stdout.write(`build.js: wrote ${path.relative(process.cwd(), file) || file} (runtime ${size} bytes, solc ${solc.version()})\n`);
}

main();
