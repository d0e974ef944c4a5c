/**
 * `userpci` command dispatcher. Each command lives in src/cli/commands/<name>.ts and exports a
 * CliCommand; adding one means writing that file and adding it to COMMANDS below.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, UserpciError } from '../errors.js';
import { bindCommand, unbindCommand } from './commands/bind.js';
import { configCommand } from './commands/config.js';
import { demoCommand } from './commands/demo.js';
import { infoCommand } from './commands/info.js';
import { listCommand } from './commands/list.js';
import { netCommand } from './commands/net.js';
import { nvmeCommand } from './commands/nvme.js';
import { serveCommand } from './commands/serve.js';
import { proxyCommand, traceCommand } from './commands/proxy.js';
import { UsageError } from './format.js';

export interface CliCommand {
  /** The word typed after `userpci`. */
  readonly name: string;
  /** One line for the command table in `userpci --help`. */
  readonly summary: string;
  /** Full help: synopsis on the first line ("userpci list [options]"), then details. */
  readonly usage: string;
  /**
   * Run with the arguments after the command name; resolve to the exit code. Throw UsageError for
   * a malformed command line (exit 2, usage shown) and UserpciError for failures (exit 1); main()
   * prints either as one line, never a stack trace.
   */
  run(args: string[]): Promise<number>;
}

/** The command table, in the order `--help` lists it. */
export const COMMANDS: readonly CliCommand[] = [listCommand, infoCommand, configCommand, bindCommand, unbindCommand, serveCommand, proxyCommand, traceCommand, demoCommand, nvmeCommand, netCommand];

export function findCommand(name: string): CliCommand | undefined {
  return COMMANDS.find((command) => command.name === name);
}

export async function main(argv: string[]): Promise<number> {
  exitQuietlyOnClosedPipe();
  const [first, ...rest] = argv;
  if (first === undefined) {
    process.stderr.write(overallHelp());
    return 2;
  }
  if (first === '--help' || first === '-h') {
    process.stdout.write(overallHelp());
    return 0;
  }
  if (first === '--version' || first === '-V') {
    process.stdout.write(`userpci ${packageVersion()}\n`);
    return 0;
  }
  if (first === 'help') {
    const topic = rest[0] === undefined ? undefined : findCommand(rest[0]);
    if (rest[0] !== undefined && topic === undefined) return unknownCommand(rest[0]);
    process.stdout.write(topic ? withNewline(topic.usage) : overallHelp());
    return 0;
  }
  const command = findCommand(first);
  if (!command) return unknownCommand(first);
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(withNewline(command.usage));
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (error) {
    return reportFailure(command, error, rest.includes('--json'));
  }
}

/**
 * One rule for every command: a malformed command line exits 2 (with the usage line), a failure
 * while doing the work exits 1. With --json the failure is `{"error":{"code","message"}}` on
 * stdout instead, so a script reading JSON always gets JSON.
 */
function reportFailure(command: CliCommand, error: unknown, json: boolean): number {
  const prefix = `userpci ${command.name}: `;
  const usage = error instanceof UsageError || isParseArgsError(error) || error instanceof InvalidArgumentError;
  const message = isParseArgsError(error) ? parseArgsMessage(error as Error & { code: string }) : error instanceof Error ? error.message : String(error);
  const code = error instanceof UserpciError ? error.code : usage ? 'EINVAL' : 'EIO';
  const status = usage ? 2 : 1;
  if (json) {
    process.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
    return status;
  }
  if (error instanceof UsageError || isParseArgsError(error)) {
    const synopsis = (error instanceof UsageError ? error.synopsis : undefined) ?? command.usage.split('\n')[0];
    process.stderr.write(`${prefix}${message}\nusage: ${synopsis}\n(see "userpci ${command.name} --help")\n`);
    return status;
  }
  process.stderr.write(`${prefix}${message}\n`);
  // Not one of ours: still one line, but keep the stack available for bug reports.
  if (!(error instanceof UserpciError) && process.env['USERPCI_DEBUG'] && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  return status;
}

function isParseArgsError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

/** node:util parseArgs explains at length; say it in our words, in one line. */
function parseArgsMessage(error: Error & { code: string }): string {
  const option = /'(-[^' ]+)/.exec(error.message)?.[1];
  switch (error.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${option ?? error.message}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return /argument missing/.test(error.message) ? `option ${option} needs a value` : `option ${option} takes no value`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${/'([^']+)'/.exec(error.message)?.[1] ?? ''}`.trim();
    default:
      return error.message.split('\n')[0]!;
  }
}

function unknownCommand(name: string): number {
  const suggestion = COMMANDS.map((command) => command.name).find((known) => editDistance(known, name) <= 2);
  const hint = suggestion ? ` Did you mean "${suggestion}"?` : '';
  process.stderr.write(
    `userpci: unknown command "${name}".${hint}\nCommands: ${COMMANDS.map((command) => command.name).join(', ')}. Run "userpci --help" for usage.\n`,
  );
  return 2;
}

function overallHelp(): string {
  const width = Math.max(...COMMANDS.map((command) => command.name.length));
  const table = COMMANDS.map((command) => `  ${command.name.padEnd(width)}  ${command.summary}`).join('\n');
  return [
    'usage: userpci <command> [arguments]',
    '',
    'Write, bind and inspect user-space PCI drivers over VFIO.',
    '',
    'Commands:',
    table,
    '',
    'Run "userpci <command> --help" for a command\'s options.',
    'Exit status: 0 done, 1 the command failed, 2 the command line was malformed (usage).',
    'With --json, a failure prints {"error":{"code":"EBUSY","message":"..."}} on stdout.',
    'Environment: USERPCI_SYSFS_ROOT (default /sys), USERPCI_PROC_ROOT (default /proc), USERPCI_PCI_IDS (path of pci.ids).',
    '',
  ].join('\n');
}

function packageVersion(): string {
  try {
    // dist/src/cli/main.js -> package.json at the root.
    const text = readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8');
    return String((JSON.parse(text) as { version?: unknown }).version ?? 'unknown');
  } catch {
    return 'unknown';
  }
}

let pipeGuardInstalled = false;

/** `userpci list | head -1` closes stdout early; that is the reader's choice, not an error. */
function exitQuietlyOnClosedPipe(): void {
  if (pipeGuardInstalled) return;
  pipeGuardInstalled = true;
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
}

function withNewline(text: string): string {
  return text.endsWith('\n') ? text : `${text}\n`;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}
