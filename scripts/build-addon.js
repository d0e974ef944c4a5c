#!/usr/bin/env node
// Builds the C addon at install (`npm ci`) with node-gyp, offline. node-gyp downloads Node's
// headers unless told where they are; distributions ship them beside the binary (Debian's
// nodejs: /usr/include/node), so look there first. Failure ends with one line that says what
// is missing; node-gyp's own output stays above it for the details.
'use strict';
const { spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const path = require('node:path');

/** A prefix P with P/include/node/node_api.h for the running Node, or undefined. */
function findNodeHeaders() {
  const configured = process.env.npm_config_nodedir;
  if (configured) return configured;
  const candidates = [path.resolve(path.dirname(process.execPath), '..'), '/usr', '/usr/local'];
  return candidates.find((prefix) => existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) && existsSync(path.join(prefix, 'include', 'node', 'common.gypi')));
}

/** npm tells lifecycle scripts where its bundled node-gyp is; fall back to npm's usual home. */
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((file) => file && existsSync(file));
}

function fail(message) {
  process.stderr.write(`userpci: cannot build the native addon: ${message}\n`);
  process.exit(1);
}

const nodeGyp = findNodeGyp();
if (!nodeGyp) fail('node-gyp was not found (it ships with npm; run the install through npm)');
const headers = findNodeHeaders();
if (!headers) fail(`Node's C headers (include/node/node_api.h) are not installed beside ${process.execPath}; install them (Debian: libnode-dev, or nodejs from nodesource) or set npm_config_nodedir`);

const args = [nodeGyp, 'rebuild', `--nodedir=${headers}`];
// node-gyp also reads npm_config_nodedir from the environment, where an empty value beats the flag.
const env = { ...process.env, npm_config_nodedir: headers };
const result = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: path.join(__dirname, '..'), env });
if (result.status !== 0) {
  fail(`node-gyp exited with ${result.status ?? result.signal} (headers from ${headers}); it needs python3, make and a C compiler (Debian: build-essential python3)`);
}
