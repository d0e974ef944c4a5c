#!/usr/bin/env node
'use strict';
// Every failure, including a package that is not built or an addon that will not load, ends in
// one line on stderr and a non-zero exit: usage errors 2, everything else 1.
function die(error) {
  const message = error && error.message ? error.message : String(error);
  process.stderr.write(`userpci: ${message.split('\n')[0]}\n`);
  process.exitCode = 1;
}

let cli;
try {
  cli = require('../dist/src/cli/main.js');
} catch (err) {
  const notBuilt = err && err.code === 'MODULE_NOT_FOUND' && /dist[\\/]src[\\/]cli[\\/]main\.js/.test(err.message);
  die(notBuilt ? 'the package is not built (dist/ is missing): run `npm ci` (or `npm run build`) in its folder' : err);
}
if (cli) cli.main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, die);
