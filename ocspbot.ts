#!/usr/bin/env -S deno run --allow-read --allow-write --allow-run --allow-env --v8-flags=--max-semi-space-size=1
// Copyright 2026 the ocspbot authors. MIT license.

/**
 * ocspbot keeps the OCSP responses that web servers staple fresh: it finds
 * the certificates whose stored response is missing, broken or due, fetches
 * a new one from the CA's responder with openssl, verifies it and replaces
 * the stored file atomically. A drop-in port of the Python OCSP Bot: its
 * configs keep their meaning and its return codes keep theirs.
 *
 * Run it from cron, hourly:
 *
 * ```sh
 * deno run --allow-read --allow-write --allow-run --allow-env ocspbot.ts /etc/ocspbot.yaml
 * deno run --allow-read --allow-write --allow-run --allow-env https://example.org/ocspbot.ts ocspbot.yaml
 * deno compile --allow-read --allow-write --allow-run --allow-env \
 *   --v8-flags=--max-semi-space-size=1 -o ocspbot ocspbot.ts
 * # crontab: 17 * * * * cd /etc/ocspbot && /usr/local/bin/ocspbot ocspbot.yaml
 * ```
 *
 * `--check` reports like a Nagios plugin without changing anything,
 * `--json` prints a report, `-q` keeps cron quiet, `--force` renews now;
 * `ocspbot --help` lists them with the exit statuses.
 *
 * The chapters of this file, in the order data flows through them (a test
 * holds this map against the chapters' banners):
 *
 * ```
 * contract  argv ─parseCommandLine─▶ Invocation; exit statuses, help
 * config    file ─loadConfig(CONFIG_KEYS)─▶ Config: one row per key
 * discover  Config ─discoverTargets─▶ Target[]: domains, scan_keys
 * inspect   Target ─inspect─▶ Facts: certificate, state, stored response
 * rules     Facts ─planTarget─▶ Plan; every verdict on a response (pure)
 * fetch     Plan ─fetchWithRetries─▶ a verified answer (openssl)
 * write     the one door for files (Files): responses, backups, lock
 * report    Outcome[] ─REPORTERS─▶ log, Nagios line, JSON, metrics
 * run       main ─▶ the hourly run or --check ─▶ exit status
 * haproxy   add-on: pushes to HAProxy's runtime API, retried until taken
 * serve     add-on: --check asks the server what it staples
 * hooks     add-ons: --renewed (the deploy hook) and on_change
 * journal   add-on: sd-daemon priorities for systemd's journal
 * start     the process: surroundings, main(), Deno.exit
 * ```
 *
 * main() parses the command line once and builds one RunContext (log,
 * state, files, stop signal) that it passes down; nothing of a run lives in
 * the module, so main() runs in-process.
 *
 * The permissions it needs, and why each, are in the README's Install
 * section; `OCSPBOT_DEBUG=1` adds stack traces to unexpected errors.
 * `--v8-flags=--max-semi-space-size=1` is optional: it keeps V8's young
 * generation small, which with thousands of certificates saves a fifth of
 * the memory (docs/performance.md).
 *
 * @module
 */

// Types only: js-yaml itself is imported by loadYamlReader(), where a failure can be caught.
// @ts-types="npm:@types/js-yaml@4.0.9"
import type * as JsYaml from "npm:js-yaml@4.1.0";
import type { X509Certificate } from "node:crypto";
import * as path from "node:path";

// --------------------------------------------------------------- contract --
// What ocspbot promises on its command line: the exit statuses (the Python
// bot's return codes), the help, and the one reading of argv into an Invocation.

export const VERSION = "1.0.0";

/**
 * Exit statuses. The Python bot returned -1..-4, which a shell sees as
 * 255..252; renewals are counted up to 251 so they never read as an error
 * (or, at 256, as 0).
 */
export const EXIT = {
  maxRenewed: 251,
  badArguments: 252,
  configInvalid: 253,
  configUnloadable: 254,
  failure: 255,
} as const;

/** --check's exit statuses, a Nagios plugin's. */
const NAGIOS = { ok: 0, warning: 1, critical: 2, unknown: 3 } as const;

/** A run renews; a check (`--check`) decides and reports only: it changes nothing, asks no responder. */
type Mode = "run" | "check";

/** How the run reports: lines, or one JSON document on stdout with the lines on stderr. */
type Format = "text" | "json";

/** What the command line asks for. */
interface Invocation {
  configPath: string;
  help: boolean;
  version: boolean;
  mode: Mode;
  format: Format;
  /** Print only warnings and errors. */
  quiet: boolean;
  /** Renew regardless of timing, every certificate the run covers. */
  force: boolean;
  /** `--only`: the ids the run, --check or --force covers; empty for all. */
  only: string[];
  /**
   * `--renewed`: certificate files or folders an ACME client just renewed;
   * the run covers and renews now the certificates in them.
   */
  renewed: string[];
  /**
   * `--renewed-wait`: how long a --renewed run keeps asking a responder
   * that does not know the new certificate yet, in seconds.
   */
  renewedWaitSeconds: number;
}

const DEFAULT_CONFIG = "ocspbot.yaml";

/**
 * How long a deploy hook's run (--renewed) keeps asking a responder that
 * does not know the new certificate yet: CAs publish a new certificate's
 * status within minutes, and the ACME client waits for its hook.
 */
const DEFAULT_RENEWED_WAIT_SECONDS = 300;

const HELP = `ocspbot ${VERSION}: keeps OCSP responses for stapling fresh.

Usage: ocspbot [config] [--check] [--json] [-q] [--force] [--only id ...]
               [--renewed path ... [--renewed-wait seconds]]
       ocspbot -h|-help|--help | -v|-version|--version
Options and the config may come in any order.

  config          YAML configuration (default: ${DEFAULT_CONFIG})
  --check         decide and report, change nothing, ask no responder; one
                  line per certificate and a Nagios plugin verdict
  --json          print one JSON document on stdout (logs go to stderr)
  -q, --quiet     print only warnings and errors (and --check's verdict)
  --force         renew now regardless of timing
  --only id       cover only this certificate id (repeat for more); with
                  --force, --check or a plain run
  --renewed path  renew now the certificates in this file or folder (repeat
                  for more): what an ACME client's deploy hook calls;
                  relative paths in the config start at the config's folder
  --renewed-wait seconds
                  how long --renewed keeps asking a responder that does not
                  know the new certificate yet (default: ${DEFAULT_RENEWED_WAIT_SECONDS})
  -h, --help      print this help and exit
  -v, --version   print the version and exit

Exit status:
  0        nothing renewed
  1..251   number of responses renewed (251 means 251 or more)
  252      bad command line arguments            (Python bot: -4)
  253      configuration could not be interpreted (Python bot: -3)
  254      configuration or log file could not be loaded (Python bot: -2)
  255      a certificate or on_change failed, another run holds the lock,
           or a signal stopped the run           (Python bot: -1)
With --check: 0 all fresh, 1 some due or renewals failing, 2 revoked, a
response missing, expired, not good or not verifying, renewals failing with
under half the renewal window left (or any problem of a must-staple
certificate), 3 the check could not run or found no certificate.
`;

/** Whole texts only: a stream's decoding keeps state, and needs its own TextDecoder. */
const encoder = new TextEncoder();

const decoder = new TextDecoder();

/** An error that ends the run with a given exit status. */
export class ExitError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

/**
 * Deno's `No such file or directory (os error 2): readfile 'x'`, or node:fs's
 * `ENOSPC: no space left on device, write`, without the noise.
 */
function errorText(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const node = /^E[A-Z]+: (.+?), \w+(?: '.*')?$/s.exec(message);
  if (node) return node[1][0].toUpperCase() + node[1].slice(1);
  return message.replace(/ \(os error \d+\).*$/s, "");
}

/**
 * A command line that does not parse: 252, with what it said so far, so
 * that the error is reported as the mode and format asked for.
 */
class BadCommandLine extends ExitError {
  constructor(message: string, readonly invocation: Invocation) {
    super(message, EXIT.badArguments);
  }
}

/**
 * Reads argv: `[config] [--check] [--json] [-q] [--force] [--only id ...]` in
 * any order, and the Python bot's help and version flags, which win
 * wherever they stand. Throws ExitError(252) on anything else.
 */
export function parseCommandLine(args: string[]): Invocation {
  const invocation: Invocation = {
    configPath: DEFAULT_CONFIG,
    help: false,
    version: false,
    mode: "run",
    format: "text",
    quiet: false,
    force: false,
    only: [],
    renewed: [],
    renewedWaitSeconds: DEFAULT_RENEWED_WAIT_SECONDS,
  };
  const positional: string[] = [];
  const problems: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (["-h", "-help", "--help"].includes(arg)) invocation.help = true;
    else if (["-v", "-version", "--version"].includes(arg)) invocation.version = true;
    else if (arg === "--check") invocation.mode = "check";
    else if (arg === "--json") invocation.format = "json";
    else if (arg === "-q" || arg === "--quiet") invocation.quiet = true;
    else if (arg === "--force") invocation.force = true;
    else if (arg.startsWith("--only=")) invocation.only.push(arg.slice("--only=".length));
    else if (arg === "--only") {
      const id = args[i + 1];
      if (id === undefined || id.startsWith("-")) problems.push(`--only needs a certificate id`);
      else invocation.only.push(args[++i]);
    } else if (arg.startsWith("--renewed=")) {
      // `--renewed="$RENEWED_LINEAGE"` with the variable empty would cover the working directory.
      const file = arg.slice("--renewed=".length);
      if (file === "") problems.push(`--renewed needs a file or folder`);
      else invocation.renewed.push(file);
    } else if (arg === "--renewed") {
      const file = args[i + 1];
      if (file === undefined || file === "" || file.startsWith("-")) {
        problems.push(`--renewed needs a file or folder`);
      } else invocation.renewed.push(args[++i]);
    } else if (arg === "--renewed-wait" || arg.startsWith("--renewed-wait=")) {
      const value = arg === "--renewed-wait" ? args[++i] : arg.slice("--renewed-wait=".length);
      const seconds = Number(value);
      if (value === undefined || value.trim() === "" || !(seconds >= 0) || seconds > 3600) {
        problems.push(`--renewed-wait needs a number of seconds from 0 to 3600`);
      } else invocation.renewedWaitSeconds = seconds;
    } else if (arg.startsWith("-") && arg !== "-") problems.push(`Unknown option "${arg}"`);
    else positional.push(arg);
  }
  if (invocation.help || invocation.version) return invocation;
  if (problems.length > 0) throw new BadCommandLine(problems[0], invocation);
  if (positional.length > 1) {
    throw new BadCommandLine(
      `Expected at most one config file, got ${positional.length}: ${
        positional.map((arg) => `"${arg}"`).join(", ")
      } (ids go after --only)`,
      invocation,
    );
  }
  if (positional.length === 1) invocation.configPath = positional[0];
  return invocation;
}

// ----------------------------------------------------------------- config --
// The config file, as the Python bot read it: one row per key (CONFIG_KEYS)
// says where a key may be written, how it is read and what it means absent.

const SECONDS_PER_UNIT: Record<string, number> = {
  s: 1,
  sec: 1,
  second: 1,
  seconds: 1,
  m: 60,
  min: 60,
  minute: 60,
  minutes: 60,
  h: 3600,
  hour: 3600,
  hours: 3600,
  d: 86400,
  day: 86400,
  days: 86400,
  w: 604800,
  week: 604800,
  weeks: 604800,
};

const DEFAULT_TIMEOUT_SECONDS = 30;

const DEFAULT_RETRIES = 2;

const DEFAULT_LOCK_TIMEOUT_SECONDS = 300;

/** The state file's name inside `ocsp_folder`, unless `state_file` says otherwise. */
export const DEFAULT_STATE_FILE = ".ocspbot-state.json";

/**
 * Reads `minimum_validity`: tokens `<int><unit>` or `<int> <unit>`, as the
 * Python bot did, and also the compact `1h30m`. Returns milliseconds.
 */
export function parseInterval(text: string): number {
  const token = /\s*(\d+)\s*([A-Za-z]+)\s*/y;
  let seconds = 0;
  let tokens = 0;
  while (token.lastIndex < text.length) {
    const start = token.lastIndex;
    const match = token.exec(text);
    if (!match) {
      throw new Error(
        `cannot read "${
          text.slice(start).trim()
        }" in "${text}": expected a number and a unit such as "3d" or "2 hours"`,
      );
    }
    const unit = SECONDS_PER_UNIT[match[2]];
    if (unit === undefined) {
      throw new Error(
        `unknown unit "${match[2]}" in "${text}" (known: ${
          Object.keys(SECONDS_PER_UNIT).join(", ")
        })`,
      );
    }
    seconds += Number(match[1]) * unit;
    tokens++;
  }
  if (tokens === 0) {
    throw new Error(`"${text}" is empty; expected e.g. "3d" or "2 hours"`);
  }
  return seconds * 1000;
}

/**
 * Where a key may be written: the main config's top level, an entry of
 * `domains` or of `scan_keys` (in the main config or an include), or an
 * include file's top level.
 */
export type Place = "top" | "domain" | "scan" | "include";

/** Where a value is being read, for checks that fail naming file and key. */
interface Reading {
  file: string;
  /** The key as a person finds it: `timeout`, `domains.www.cert`, `scan_keys[0].cert_mask`. */
  key: string;
  /** The place's values read so far, in table order: a default may depend on them. */
  read: Record<string, unknown>;
  fromInclude: boolean;
  /**
   * The uid of the user whose include this is, when not root's nor
   * ocspbot's: messages then name the place, never quote the text, and the
   * include may read only what that user could read.
   */
  owner?: number;
  warnings: string[];
}

/**
 * One row of the config table. `read` checks a value that is there (null
 * counts as absent); `fallback` gives the value when it is absent, at the
 * top level and in entries of keys that cannot be written at the top level;
 * `empty` is what an explicit `null` or `""` means, where that differs from
 * absent. `perCertificate` rows go with each certificate (Target): an
 * entry's own value, else the top level's.
 */
interface KeyRow<T> {
  name: string;
  places: readonly Place[];
  read(value: unknown, at: Reading): T;
  fallback?(at: Reading): T;
  empty?: T;
  perCertificate?: boolean;
}

/** The ExitError of a value that cannot be used: 253, naming file and key. */
function invalid(at: Reading, problem: string): never {
  const said = at.owner === undefined
    ? problem
    : `is not valid (the file is uid ${at.owner}'s, so what it says is not shown)`;
  throw new ExitError(`Config "${at.file}": "${at.key}" ${said}`, EXIT.configInvalid);
}

function describeType(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "empty";
  if (Array.isArray(value)) return "a list";
  if (value instanceof Date) return "a date";
  if (typeof value === "object") return "a mapping";
  return `${typeof value} ${JSON.stringify(value)}`;
}

type Mapping = Record<string, unknown>;

function asMapping(value: unknown, at: Reading): Mapping {
  if (value === null || value === undefined) return {};
  if (typeof value !== "object" || Array.isArray(value) || value instanceof Date) {
    invalid(at, `must be a mapping, not ${describeType(value)}`);
  }
  return value as Mapping;
}

function asString(value: unknown, at: Reading): string {
  if (typeof value !== "string") invalid(at, `must be a string, not ${describeType(value)}`);
  return value;
}

function asBoolean(value: unknown, at: Reading): boolean {
  if (typeof value !== "boolean") {
    invalid(at, `must be true or false (or yes/no, on/off), not ${describeType(value)}`);
  }
  return value;
}

function asNumber(value: unknown, at: Reading): number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    invalid(at, `must be a number, not ${describeType(value)}`);
  }
  return value;
}

function asList(value: unknown, at: Reading): unknown[] {
  if (!Array.isArray(value)) invalid(at, `must be a list, not ${describeType(value)}`);
  return value;
}

function asWholeNumber(minimum: number) {
  return (value: unknown, at: Reading): number => {
    const number = asNumber(value, at);
    if (!Number.isInteger(number) || number < minimum) {
      invalid(at, `must be a whole number of at least ${minimum}, not ${number}`);
    }
    return number;
  };
}

function asHttpUrl(example: string) {
  return (value: unknown, at: Reading): string => {
    const url = asString(value, at);
    // A URL's scheme may be written in capitals (RFC 3986); openssl gets it normalized.
    if (!/^https?:\/\/[^/]/i.test(url)) invalid(at, `must be ${example}, not "${url}"`);
    return url;
  };
}

/** A scan mask: it must say where the domain goes. */
function asMask(value: unknown, at: Reading): string {
  const mask = asString(value, at);
  if (!mask.includes("{domain}")) invalid(at, `must contain "{domain}", got "${mask}"`);
  return mask;
}

/**
 * A log file name; an unknown placeholder (a typo of `{year}`) is the error
 * of a log that cannot be opened, 254, as with the Python bot.
 */
function asLogTemplate(value: unknown, at: Reading): string {
  const template = asString(value, at);
  const unknown = unknownPlaceholders(template);
  if (unknown.length > 0) {
    throw new ExitError(
      `Config "${at.file}": "${at.key}" has the unknown placeholder "{${unknown[0]}}" (known: ${
        LOG_PLACEHOLDERS.map((name) => `{${name}}`).join(" ")
      })`,
      EXIT.configUnloadable,
    );
  }
  return template;
}

/** Reads the entries of `domains` or `scan_keys`, each with the rows of its place. */
function asEntries<P extends "domain" | "scan">(place: P) {
  return (value: unknown, at: Reading) => {
    const entries: [string, unknown][] = place === "domain"
      ? Object.entries(asMapping(value, at))
      : asList(value, at).map((entry, index) => [String(index), entry]);
    return entries.map(([id, entry]) => {
      const key = place === "domain" ? `${at.key}.${id}` : `${at.key}[${id}]`;
      const read = readPlace(asMapping(entry, { ...at, key }), place, { ...at, key });
      const origin = { id, key, file: at.file, fromInclude: at.fromInclude, owner: at.owner };
      return { ...read, ...origin } as
        & PlaceValues<P, typeof ENTRY_KEYS>
        & EntryOrigin;
    });
  };
}

/** Where an entry of `domains` or `scan_keys` was written. */
interface EntryOrigin {
  /** The domain's id; a scan entry's index. */
  id: string;
  /** Its key: `domains.www`, `scan_keys[0]`. */
  key: string;
  file: string;
  /** Written in an include: its responses must stay inside ocsp_folder. */
  fromInclude: boolean;
  /** Reading.owner: the include's user, who must be able to read what it names. */
  owner?: number;
}

function missing(at: Reading): never {
  return invalid(at, "is missing");
}

/**
 * The keys that may describe a certificate in an entry of `domains` or
 * `scan_keys`: part of CONFIG_KEYS, kept apart only so that the entries'
 * types can be derived from them.
 */
const ENTRY_KEYS = {
  haproxySocket: {
    name: "haproxy_socket",
    places: ["top", "domain", "scan"],
    read: (value: unknown, at: Reading) =>
      (Array.isArray(value) ? value : [value]).map((socket, i) => {
        const here = Array.isArray(value) ? { ...at, key: `${at.key}[${i}]` } : at;
        try {
          haproxyAddress(asString(socket, here));
        } catch (error) {
          if (error instanceof ExitError) throw error;
          invalid(here, errorText(error));
        }
        return socket as string;
      }),
    perCertificate: true,
  },
  serve: {
    name: "serve",
    places: ["top", "domain", "scan"],
    read: (value: unknown, at: Reading): ServeAddress => {
      const { address, name } = typeof value === "string"
        ? { address: value, name: undefined }
        : asMapping(value, at);
      if (address === undefined) missing({ ...at, key: `${at.key}.address` });
      try {
        const parsed = serveAddress(asString(address, { ...at, key: `${at.key}.address` }));
        if (name === undefined) return parsed;
        return { ...parsed, servername: asString(name, { ...at, key: `${at.key}.name` }) };
      } catch (error) {
        if (error instanceof ExitError) throw error;
        return invalid(at, errorText(error));
      }
    },
    perCertificate: true,
  },
  cert: { name: "cert", places: ["domain"], read: asString, fallback: missing },
  chain: { name: "chain", places: ["domain"], read: asString },
  rootchain: { name: "rootchain", places: ["domain"], read: asString },
  ocsp: { name: "ocsp", places: ["domain"], read: asString, fallback: missing },
  responderUri: {
    name: "ocsp_responder_uri",
    places: ["domain"],
    // `certificate`, as in the Python bot: the URL the certificate names.
    read: (value: unknown, at: Reading) =>
      value === "certificate" ? undefined : asHttpUrl(`an http:// URL or "certificate"`)(value, at),
    perCertificate: true,
  },
  folder: { name: "folder", places: ["scan"], read: asString, fallback: () => "" },
  recursive: { name: "recursive", places: ["scan"], read: asBoolean, fallback: () => true },
  certMask: {
    name: "cert_mask",
    places: ["scan"],
    read: (value: unknown, at: Reading) => {
      const mask = asMask(value, at);
      if (mask.includes("/") && !mask.split("/")[0].includes("{domain}")) {
        invalid(
          at,
          `has a folder without "{domain}" ("${mask}"): put the folder in "folder", or {domain} in the first folder, as "{domain}/cert.pem"`,
        );
      }
      return mask;
    },
    fallback: () => "{domain}.pem",
  },
  // null or "": no such file, as a domain without chain or rootchain.
  chainMask: {
    name: "chain_mask",
    places: ["scan"],
    read: asString,
    fallback: () => "{domain}-chain.pem",
    empty: undefined,
  },
  rootchainMask: {
    name: "rootchain_mask",
    places: ["scan"],
    read: asString,
    fallback: () => "{domain}-rootchain.pem",
    empty: undefined,
  },
  ocspMask: {
    name: "ocsp_mask",
    places: ["scan"],
    read: asMask,
    fallback: () => "{domain}.ocsp-resp",
  },
} as const satisfies Record<string, KeyRow<unknown>>;

/**
 * Every key a config may hold, once: where it may be written, how it is read
 * and checked, its default, and (by its name here) the field it fills. Key
 * lists, unknown-key warnings, checks and defaults all come from here, and
 * the README's list of keys is tested against it. Rows are read in this
 * order, so a default may use the rows above it.
 */
const CONFIG_KEYS = {
  ocspFolder: { name: "ocsp_folder", places: ["top"], read: asString, fallback: () => "" },
  minimumValidityMs: {
    name: "minimum_validity",
    places: ["top"],
    read: (value: unknown, at: Reading) => {
      try {
        return parseInterval(asString(value, at));
      } catch (error) {
        if (error instanceof ExitError) throw error;
        return invalid(at, errorText(error));
      }
    },
  },
  minimumValidityPercentage: {
    name: "minimum_validity_percentage",
    places: ["top"],
    read: (value: unknown, at: Reading) => {
      const percentage = asNumber(value, at);
      if (percentage < 0 || percentage > 100) {
        invalid(at, `must be between 0 and 100, not ${percentage}`);
      }
      return percentage;
    },
  },
  stapleRevoked: {
    name: "on_revoked",
    places: ["top"],
    read: (value: unknown, at: Reading) => {
      const onRevoked = asString(value, at);
      if (onRevoked !== "keep" && onRevoked !== "staple") {
        invalid(at, `must be "keep" or "staple", not "${onRevoked}"`);
      }
      return onRevoked === "staple";
    },
    fallback: () => false,
  },
  parallelThreads: {
    name: "parallel_threads",
    places: ["top"],
    read: asWholeNumber(1),
    fallback: () => 1,
  },
  stopOnError: { name: "stop_on_error", places: ["top"], read: asBoolean, fallback: () => false },
  makeBackups: { name: "make_backups", places: ["top"], read: asBoolean, fallback: () => false },
  backupFolder: { name: "backup_folder", places: ["top"], read: asString },
  keepBackups: { name: "keep_backups", places: ["top"], read: asWholeNumber(1) },
  opensslExecutable: {
    name: "openssl_executable",
    places: ["top"],
    read: asString,
    fallback: () => "openssl",
  },
  timeoutSeconds: {
    name: "timeout",
    places: ["top"],
    read: (value: unknown, at: Reading) => {
      const seconds = asNumber(value, at);
      if (seconds <= 0) invalid(at, `must be more than 0 seconds, not ${seconds}`);
      return seconds;
    },
    fallback: () => DEFAULT_TIMEOUT_SECONDS,
  },
  retries: {
    name: "retries",
    places: ["top"],
    read: asWholeNumber(0),
    fallback: () => DEFAULT_RETRIES,
  },
  proxy: {
    name: "proxy",
    places: ["top"],
    read: asHttpUrl(`a URL such as "http://proxy.example:3128"`),
  },
  onChange: {
    name: "on_change",
    places: ["top"],
    read: (value: unknown, at: Reading) => {
      const command = asList(value, at).map((word, i) => {
        if (typeof word !== "string" && typeof word !== "number") {
          invalid({ ...at, key: `${at.key}[${i}]` }, `must be a string, not ${describeType(word)}`);
        }
        return String(word);
      });
      if (command.length === 0) invalid(at, "must name a command, e.g. [systemctl, reload, nginx]");
      return command;
    },
  },
  metricsFile: { name: "metrics_file", places: ["top"], read: asString },
  stateFile: {
    name: "state_file",
    places: ["top"],
    read: asString,
    fallback: (at: Reading) => path.join(at.read.ocspFolder as string, DEFAULT_STATE_FILE),
  },
  lockTimeoutSeconds: {
    name: "lock_timeout",
    places: ["top"],
    read: (value: unknown, at: Reading) => {
      const seconds = asNumber(value, at);
      if (seconds < 0) invalid(at, `must be 0 or more seconds, not ${seconds}`);
      return seconds;
    },
    fallback: () => DEFAULT_LOCK_TIMEOUT_SECONDS,
  },
  outputLog: { name: "output_log", places: ["top"], read: asLogTemplate },
  errorLog: { name: "error_log", places: ["top"], read: asLogTemplate },
  ...ENTRY_KEYS,
  domains: {
    name: "domains",
    places: ["top", "include"],
    read: asEntries("domain"),
    fallback: () => [],
  },
  scanKeys: {
    name: "scan_keys",
    places: ["top", "include"],
    read: asEntries("scan"),
    fallback: () => [],
  },
  includes: {
    name: "includes",
    places: ["top"],
    read: (value: unknown, at: Reading) =>
      asList(value, at).map((folder, i) =>
        typeof folder === "string" ? folder : invalid(
          { ...at, key: `${at.key}[${i}]` },
          `must be a folder name, not ${describeType(folder)}`,
        )
      ),
    fallback: () => [],
  },
} as const satisfies Record<string, KeyRow<unknown>>;

/** A row's value: what `read` returns; undefined too where it has no default, or `empty` says so. */
type RowValue<R> =
  | (R extends { read(value: unknown, at: Reading): infer T } ? T : never)
  | (R extends { fallback: unknown } ? never : undefined)
  | (R extends { empty: infer E } ? E : never);

/**
 * The values a place holds, by field, from the rows of `Rows`. In an entry,
 * a key the top level also sets may be absent: the top level's applies.
 */
type PlaceValues<P extends Place, Rows = typeof CONFIG_KEYS> = {
  -readonly [
    F in keyof Rows as Rows[F] extends { places: readonly (infer Q)[] } ? P extends Q ? F : never
      : never
  ]: P extends "domain" | "scan"
    ? Rows[F] extends { places: readonly (infer Q)[] }
      ? "top" extends Q ? RowValue<Rows[F]> | undefined
      : RowValue<Rows[F]>
    : never
    : RowValue<Rows[F]>;
};

/** The settings each certificate carries: its entry's, else the top level's. */
type CertificateSettings = {
  -readonly [
    F in keyof typeof ENTRY_KEYS as (typeof ENTRY_KEYS)[F] extends { perCertificate: true } ? F
      : never
  ]: RowValue<(typeof ENTRY_KEYS)[F]>;
};

/** When a good stored response is due; either limit or both. */
type RenewalPolicy = Partial<
  Pick<PlaceValues<"top">, "minimumValidityMs" | "minimumValidityPercentage" | "stapleRevoked">
>;

/** The interpreted configuration, includes not yet read. */
type Config =
  & Omit<PlaceValues<"top">, keyof RenewalPolicy>
  & {
    file: string;
    policy: RenewalPolicy;
    /**
     * What the run cannot do and must say, each failing only its own part:
     * an include left out, a certificate refused when found. Each one makes
     * the run end 255 and --check CRITICAL.
     */
    problems: string[];
  };

/** One entry of `domains`, as written in a config file. */
type DomainEntry = PlaceValues<"domain", typeof ENTRY_KEYS> & EntryOrigin;

/** One entry of `scan_keys`. */
type ScanEntry = PlaceValues<"scan", typeof ENTRY_KEYS> & EntryOrigin;

/** Every key of the table, as written, with the places it may be written in. */
export function configKeys(): { name: string; places: readonly Place[] }[] {
  return Object.values(CONFIG_KEYS as Record<string, KeyRow<unknown>>)
    .map(({ name, places }) => ({ name, places }));
}

/** The names the rows of a place know, for unknown-key warnings. */
function keyNames(place: Place): string[] {
  return Object.values(CONFIG_KEYS as Record<string, KeyRow<unknown>>)
    .filter((row) => row.places.includes(place))
    .map((row) => row.name);
}

function isEntry(place: Place): boolean {
  return place === "domain" || place === "scan";
}

/** Reads a mapping of one place with the table: checks, defaults and unknown keys. */
function readPlace(map: Mapping, place: Place, at: Reading): Record<string, unknown> {
  const prefix = isEntry(place) ? `${at.key}.` : "";
  const known = keyNames(place);
  for (const name of Object.keys(map)) {
    if (known.includes(name)) continue;
    if (at.owner !== undefined) {
      at.warnings.push(
        `Config "${at.file}": an unknown key in "${prefix || "(top level)"}" is ignored`,
      );
      continue;
    }
    const guess = known.find((candidate) => editDistance(name, candidate) <= 2);
    at.warnings.push(
      `Config "${at.file}": unknown key "${prefix}${name}" is ignored${
        guess ? ` (did you mean "${prefix}${guess}"?)` : ""
      }`,
    );
  }
  const read: Record<string, unknown> = {};
  for (const [field, row] of Object.entries(CONFIG_KEYS as Record<string, KeyRow<unknown>>)) {
    if (!row.places.includes(place)) continue;
    const here: Reading = { ...at, key: prefix + row.name, read };
    const value = map[row.name];
    if ("empty" in row && row.name in map && (value === null || value === "")) {
      read[field] = row.empty;
    } else if (value !== undefined && value !== null) {
      read[field] = row.read(value, here);
    } else if (row.fallback && !(isEntry(place) && row.places.includes("top"))) {
      read[field] = row.fallback(here);
    }
  }
  return read;
}

/** Levenshtein distance, for "did you mean" on a mistyped key. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * Interprets a parsed main config file. Throws ExitError(253) naming the file
 * and key; unknown keys only add warnings.
 */
export function interpretConfig(
  document: unknown,
  file: string,
  warnings: string[] = [],
): Config {
  if (document === null || document === undefined) {
    throw new ExitError(
      `Config "${file}" is empty: it needs at least "minimum_validity" or "minimum_validity_percentage"`,
      EXIT.configInvalid,
    );
  }
  const at: Reading = { file, key: "(top level)", read: {}, fromInclude: false, warnings };
  const read = readPlace(asMapping(document, at), "top", at) as PlaceValues<"top">;
  const { minimumValidityMs, minimumValidityPercentage, stapleRevoked, ...rest } = read;
  if (minimumValidityMs === undefined && minimumValidityPercentage === undefined) {
    invalid(
      { ...at, key: "minimum_validity" },
      `is missing: give "minimum_validity", "minimum_validity_percentage" or both`,
    );
  }
  const policy: RenewalPolicy = {};
  if (minimumValidityMs !== undefined) policy.minimumValidityMs = minimumValidityMs;
  if (minimumValidityPercentage !== undefined) {
    policy.minimumValidityPercentage = minimumValidityPercentage;
  }
  if (stapleRevoked) policy.stapleRevoked = true;
  return { ...rest, file, policy, problems: [] };
}

/** Interprets an include file: only `domains` and `scan_keys` count there. */
function interpretInclude(
  document: unknown,
  file: string,
  warnings: string[] = [],
  owner?: number,
): { domains: DomainEntry[]; scanKeys: ScanEntry[] } {
  const at: Reading = { file, key: "(top level)", read: {}, fromInclude: true, owner, warnings };
  return readPlace(asMapping(document, at), "include", at) as PlaceValues<"include">;
}

const LOG_PLACEHOLDERS = ["year", "month", "day", "hour", "minute", "second"];

/** The placeholders of a log file name that formatLogName() does not fill. */
function unknownPlaceholders(template: string): string[] {
  return [...template.matchAll(/\{([^{}]*)\}/g)]
    .map((match) => match[1])
    .filter((name) => !LOG_PLACEHOLDERS.includes(name));
}

/**
 * Fills `{year}`…`{second}` of a log file name with local time: in
 * `timeZone` (the run's `TZ`) when Intl knows it, else the process's own.
 */
export function formatLogName(template: string, now: Date, timeZone?: string): string {
  const fields = localTime(now, timeZone);
  return template.replace(
    new RegExp(`\\{(${LOG_PLACEHOLDERS.join("|")})\\}`, "g"),
    (_, field: string) => String(fields[field]).padStart(field === "year" ? 4 : 2, "0"),
  );
}

/** The fields of `now` on the wall clock of `timeZone` (an IANA name such as `TZ` holds). */
function localTime(now: Date, timeZone?: string): Record<string, number> {
  let parts: Intl.DateTimeFormatPart[] | undefined;
  try {
    // TZ's POSIX forms (":/etc/localtime", "CET-1") are not Intl's: the process's zone then.
    parts = timeZone
      ? new Intl.DateTimeFormat("en-US", {
        timeZone: timeZone.replace(/^:/, ""),
        hourCycle: "h23",
        year: "numeric",
        month: "numeric",
        day: "numeric",
        hour: "numeric",
        minute: "numeric",
        second: "numeric",
      }).formatToParts(now)
      : undefined;
  } catch {
    parts = undefined;
  }
  if (!parts) {
    return {
      year: now.getFullYear(),
      month: now.getMonth() + 1,
      day: now.getDate(),
      hour: now.getHours(),
      minute: now.getMinutes(),
      second: now.getSeconds(),
    };
  }
  const field = (type: string) => Number(parts.find((part) => part.type === type)?.value);
  return Object.fromEntries(LOG_PLACEHOLDERS.map((name) => [name, field(name)]));
}

/** Parses YAML as the Python bot's PyYAML did; `json` lets a repeated key overwrite. */
interface YamlReader {
  load(text: string, json: boolean): unknown;
}

/**
 * Imports js-yaml at run time, not at the top of the file: a module Deno
 * cannot fetch (an offline server whose cache lacks it) then ends the run
 * with 254 and a message, not with Deno's own status 1, "1 renewed".
 *
 * PyYAML reads YAML 1.1, where yes/no/on/off are booleans; js-yaml reads
 * 1.2, where they are strings. Configs written for the Python bot must keep
 * their meaning, so the 1.1 booleans replace the 1.2 ones.
 */
async function loadYamlReader(): Promise<YamlReader> {
  let yaml: typeof JsYaml;
  try {
    yaml = (await import("npm:js-yaml@4.1.0")).default as typeof JsYaml;
  } catch (error) {
    throw new ExitError(
      `Cannot load the YAML parser (npm:js-yaml): ${
        errorText(error).split("\n")[0]
      }; run "deno cache" on ocspbot.ts once where the npm registry can be reached (see the README's Install)`,
      EXIT.configUnloadable,
    );
  }
  const boolean = new yaml.Type("tag:yaml.org,2002:bool", {
    kind: "scalar",
    resolve: (text: string) =>
      /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/
        .test(text),
    construct: (text: string) => /^(?:yes|Yes|YES|true|True|TRUE|on|On|ON)$/.test(text),
    predicate: (value: unknown) => typeof value === "boolean",
  });
  const schema = yaml.DEFAULT_SCHEMA.extend({ implicit: [boolean] });
  return { load: (text, json) => yaml.load(text, { schema, json }) };
}

/**
 * Parses a config file's text; ExitError(254) when it does not parse. The
 * error of a file another user controls (`hidden`) gives the line, not the
 * text: quoting it is how root would show what a planted file says.
 */
function parseYaml(
  text: string,
  file: string,
  warnings: string[],
  yaml: YamlReader,
  hidden: boolean,
) {
  const failure = (error: unknown) => {
    const mark = (error as { mark?: { line?: number } }).mark;
    const reason = (error as { reason?: string }).reason;
    return hidden && typeof mark?.line === "number"
      ? `line ${mark.line + 1}: ${reason ?? "not YAML"}`
      : hidden
      ? "not YAML"
      : errorText(error);
  };
  try {
    return yaml.load(text, false);
  } catch (error) {
    // PyYAML lets a repeated key overwrite the earlier one; so do we, loudly.
    if (!/duplicated mapping key/.test(errorText(error))) {
      throw new ExitError(
        `Cannot parse config "${file}": ${failure(error)}`,
        EXIT.configUnloadable,
      );
    }
    warnings.push(
      `Config "${file}": a key appears twice; the last one counts, as with the Python bot: ${
        failure(error).split("\n")[0]
      }`,
    );
    return yaml.load(text, true);
  }
}

/**
 * Reads the main config and its includes. An include that cannot be read,
 * parsed or used is left out with a problem that names it (its certificates
 * are not renewed, the run ends 255), not the whole run: includes often come
 * from other teams. An include is read only if it is a file of its own, not
 * another user's link nor a second name of another file.
 */
function loadConfig(
  file: string,
  warnings: string[],
  yaml: YamlReader,
  files: Files,
): Config {
  let text: string;
  try {
    text = decoder.decode(files.read(file, "config", "any").bytes);
  } catch (error) {
    throw new ExitError(`Cannot read config "${file}": ${errorText(error)}`, EXIT.configUnloadable);
  }
  const config = interpretConfig(parseYaml(text, file, warnings, yaml, false), file, warnings);
  for (const folder of config.includes) {
    let names: string[];
    try {
      names = [...Deno.readDirSync(folder)]
        .filter((entry) => /\.ya?ml$/.test(entry.name) && !entry.isDirectory)
        .map((entry) => entry.name)
        .sort();
    } catch (error) {
      // The Python bot only warned, and the certificates it held went unmanaged.
      const problem = error instanceof Deno.errors.NotFound
        ? "does not exist"
        : error instanceof Deno.errors.NotADirectory
        ? "is not a folder"
        : errorText(error);
      throw new ExitError(
        `Config "${file}": include folder "${folder}" ${problem}; fix or remove it in "includes"`,
        EXIT.configInvalid,
      );
    }
    for (const name of names) {
      // The Python bot tested these names against the working directory, so
      // includes did nothing unless it was started inside the include folder.
      const included = path.join(folder, name);
      try {
        const read = files.read(included, "include", "trusted");
        if (read.info.nlink > 1) {
          throw new Error(
            `"${included}" has ${read.info.nlink} hard links, so it is also another file; an include must be a file of its own`,
          );
        }
        const owner = read.ours ? undefined : read.info.uid;
        const document = parseYaml(
          decoder.decode(read.bytes),
          included,
          warnings,
          yaml,
          owner !== undefined,
        );
        const { domains, scanKeys } = interpretInclude(document, included, warnings, owner);
        config.domains.push(...domains);
        config.scanKeys.push(...scanKeys);
      } catch (error) {
        // A link to an include not written yet, as a folder once was skipped.
        if (error instanceof Deno.errors.NotFound) continue;
        config.problems.push(
          `Include "${included}" is left out, its certificates are not renewed: ${
            errorText(error)
          }`,
        );
      }
    }
  }
  return config;
}

// --------------------------------------------------------------- discover --
// From a Config to the certificates it covers: `domains` entries as written,
// `scan_keys` folders listed (and remembered while they stay the same).

/**
 * One certificate to keep a response for: its response path resolved, its
 * certificate, chain and rootchain as the config or the scan found them
 * (relative to the working directory when written so), with the settings of
 * its entry (CONFIG_KEYS' perCertificate rows: `haproxy_socket`,
 * `ocsp_responder_uri`, …).
 */
type Target = CertificateSettings & {
  id: string;
  certPath: string;
  chainPath?: string;
  rootchainPath?: string;
  responsePath: string;
  /** Where it was configured, for messages. */
  source: string;
};

/**
 * A scan mask, matched and filled. The usual mask has one `{domain}`, which
 * plain string operations handle: a scan of 30,000 names is the hot path of
 * an hourly run, and a regular expression costs a match array per name.
 */
class Mask {
  readonly #parts: string[];
  readonly #pattern: RegExp;

  constructor(text: string) {
    this.#parts = text.split("{domain}");
    this.#pattern = maskPattern(text);
  }

  /** The domain a whole file name gives this mask, or undefined. */
  match(name: string): string | undefined {
    if (this.#parts.length !== 2) return this.#pattern.exec(name)?.[1];
    const [prefix, suffix] = this.#parts;
    if (name.length <= prefix.length + suffix.length) return undefined;
    if (!name.startsWith(prefix) || !name.endsWith(suffix)) return undefined;
    return name.slice(prefix.length, name.length - suffix.length);
  }

  /** Whether it names `{domain}` at all. */
  get hasDomain(): boolean {
    return this.#parts.length > 1;
  }

  fill(domain: string): string {
    return this.#parts.length === 2
      ? this.#parts[0] + domain + this.#parts[1]
      : this.#parts.join(domain);
  }
}

/** Where scans are remembered from one run to the next: the State. */
type ScanMemo = Pick<State, "scanned" | "setScanned" | "realNowMs">;

/** The settings a certificate of `entry` carries: the entry's own, else the top level's. */
function certificateSettings(entry: DomainEntry | ScanEntry, config: Config): CertificateSettings {
  const settings: Record<string, unknown> = {};
  for (const [field, row] of Object.entries(ENTRY_KEYS as Record<string, KeyRow<unknown>>)) {
    if (!row.perCertificate) continue;
    settings[field] = (entry as unknown as Record<string, unknown>)[field] ??
      (config as unknown as Record<string, unknown>)[field];
  }
  return settings as CertificateSettings;
}

/** Whether `file` lies inside `folder`, both resolved, by their names. */
function isInside(file: string, folder: string): boolean {
  const relative = path.relative(path.resolve(folder), path.resolve(file));
  return relative !== "" && relative !== ".." && !relative.startsWith("../") &&
    !path.isAbsolute(relative);
}

/**
 * Why an include may not write a response at `responsePath`, or undefined:
 * includes often come from another team, who may choose the responder and
 * the rootchain, and so the bytes written; the folder must stay ocspbot's.
 */
function outsideOcspFolder(
  responsePath: string,
  ocspFolder: string,
): string | undefined {
  if (isInside(responsePath, ocspFolder)) return undefined;
  return `which lies outside ocsp_folder "${
    path.resolve(ocspFolder)
  }"; an include may only write inside ocsp_folder (the main config may write anywhere)`;
}

/** A mask as an anchored pattern: the whole file name must match. */
function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export function maskPattern(mask: string): RegExp {
  const [before, ...after] = mask.split("{domain}").map(escapeRegExp);
  return new RegExp(`^${before}(.+)${after.join("\\1")}$`);
}

function isFile(file: string): boolean {
  try {
    return Deno.statSync(file).isFile;
  } catch {
    return false;
  }
}

/**
 * Lists a folder's files and subfolders, following links as os.walk does.
 * `dangling`: links that lead to no file, whose target may appear while the
 * folder stays as it is.
 */
function listFolder(dir: string): { files: Set<string>; folders: string[]; dangling: string[] } {
  const files = new Set<string>();
  const folders: string[] = [];
  const dangling: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isFile) files.add(entry.name);
    else if (entry.isDirectory) folders.push(entry.name);
    else if (entry.isSymlink) {
      if (isFile(path.join(dir, entry.name))) files.add(entry.name);
      else dangling.push(entry.name);
    }
  }
  return { files, folders: folders.sort(), dangling };
}

/** A getter of a found certificate's path in `dir` by `mask`, from its id (domain). */
function pathOf(dir: string, mask: Mask | undefined) {
  return mask && function (this: { id: string }): string {
    return inFolder(dir, mask.fill(this.id));
  };
}

/**
 * `os.path.join(dir, name)` as the Python bot has it, for a normalized
 * folder: an absolute name stands as it is (one root bundle for every
 * certificate of a private CA), and a plain one costs no path.join().
 */
function inFolder(dir: string, name: string): string {
  if (path.isAbsolute(name)) return path.normalize(name);
  if (name.includes("/")) return path.join(dir, name);
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

/**
 * Finds the certificates of one scan_keys entry: a file matching cert_mask
 * whose chain and rootchain (where masks name them) exist. A cert_mask with
 * `{domain}` in its first folder, as certbot's `{domain}/cert.pem`, takes
 * the domain from a subfolder's name; links are followed.
 */
function scanForTargets(
  entry: ScanEntry,
  config: Config,
  memo: ScanMemo | undefined,
  warnings: string[],
): Target[] {
  const { ocspFolder } = config;
  const settings = certificateSettings(entry, config);
  const source = `scan_keys folder "${entry.folder}" of config "${entry.file}"`;
  const root = path.resolve(entry.folder);
  try {
    if (!Deno.statSync(root).isDirectory) throw new Error("not a folder");
  } catch (error) {
    const problem = error instanceof Deno.errors.NotFound ? "does not exist" : errorText(error);
    throw new ExitError(
      `Cannot scan ${source}: "${root}" ${problem}`,
      EXIT.configInvalid,
    );
  }
  const certMask = new Mask(entry.certMask);
  const ocspMask = new Mask(entry.ocspMask);
  const [chainMask, rootchainMask] = [entry.chainMask, entry.rootchainMask]
    .map((mask) => mask === undefined ? undefined : new Mask(mask));
  const slash = entry.certMask.indexOf("/");
  // `{domain}/cert.pem`: the domain is a folder's name, the file is inside it.
  const folderMask = slash < 0 ? undefined : new Mask(entry.certMask.slice(0, slash));
  const masks = [entry.certMask, entry.chainMask ?? "", entry.rootchainMask ?? ""].join("\n");
  const exists = (dir: string, files: Set<string>, name: string) =>
    name.includes("/") ? isFile(inFolder(dir, name)) : files.has(name);
  // A file outside the folder can appear while the folder stays as it is.
  const outside = [entry.chainMask, entry.rootchainMask].some((mask) =>
    mask !== undefined && path.isAbsolute(mask)
  );
  // With the Python bot's masks, "a-chain.pem" matches "{domain}.pem" too: no certificate.
  const companions = [chainMask, rootchainMask].filter((mask) => mask?.hasDomain);
  /**
   * The domains of the certificates in `dir`, in file name order, and its
   * subfolders. While the folder's stamp stays as the state recorded it, no
   * entry can have been added, removed, renamed or re-pointed, and the
   * record answers, unless a link that led nowhere now leads to a file. Not
   * for `{domain}/` masks (what decides is inside the subfolders). A
   * certificate's files are still stat'ed each run, by inspect().
   */
  const scanFolder = (
    dir: string,
  ): { domains: string[]; folders: string[]; skipped?: string[] } => {
    let stamp = "";
    try {
      stamp = folderMask || outside || !memo ? "" : fileStamp(Deno.statSync(dir), memo.realNowMs);
    } catch {
      // Listing it says what is wrong.
    }
    const remembered = stamp ? memo?.scanned(dir, masks, stamp) : undefined;
    // A link re-pointed changes the folder; one whose target appeared does not.
    const appeared = remembered?.dangling?.some((name) => isFile(path.join(dir, name)));
    if (remembered && !appeared) return remembered;
    let listed: ReturnType<typeof listFolder>;
    try {
      listed = listFolder(dir);
    } catch (error) {
      // Skipped quietly, its certificates' responses would expire unnoticed.
      throw new ExitError(
        `Cannot scan ${source}: cannot list "${dir}": ${
          errorText(error)
        }; let the user running ocspbot read it`,
        EXIT.configInvalid,
      );
    }
    const { files, folders, dangling } = listed;
    const found: [cert: string, domain: string][] = [];
    const skipped: string[] = [];
    for (const name of folderMask ? folders : files) {
      const domain = (folderMask ?? certMask).match(name);
      if (domain === undefined) continue;
      const cert = certMask.fill(domain);
      if (folderMask && !exists(dir, files, cert)) continue;
      const missing = ([[chainMask, "chain"], [rootchainMask, "rootchain"]] as const)
        .find(([mask]) => mask && !exists(dir, files, mask.fill(domain)));
      if (missing) {
        if (!companions.some((mask) => mask!.match(name) !== undefined)) {
          const [mask, what] = missing;
          skipped.push(
            `Certificate "${inFolder(dir, cert)}" (${source}) is skipped: its ${what} "${
              inFolder(dir, mask!.fill(domain))
            }" does not exist; add it, or fix "${what}_mask"`,
          );
        }
        continue;
      }
      found.push([cert, domain]);
    }
    // In file name order, so that runs go the same way every time.
    found.sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
    const scan = {
      domains: found.map(([, domain]) => domain),
      folders,
      ...(skipped.length ? { skipped } : {}),
    };
    if (stamp) {
      memo?.setScanned(dir, masks, { stamp, ...scan, ...(dangling.length ? { dangling } : {}) });
    }
    return scan;
  };
  const targets: Target[] = [];
  const walk = (relative: string) => {
    const dir = path.join(root, relative);
    ownerMayRead(dir, entry);
    const responseDir = path.resolve(ocspFolder, relative);
    const { domains, folders, skipped } = scanFolder(dir);
    // The Python bot skipped them in silence, and a run said "Success" over fewer certificates.
    if (skipped) warnings.push(...skipped);
    // What the certificates of one folder share. Each keeps only its domain
    // and makes its paths when asked: 100,000 of them then cost little memory.
    const shared = Object.create(null, {
      certPath: { get: pathOf(dir, certMask) },
      chainPath: { get: pathOf(dir, chainMask) },
      rootchainPath: { get: pathOf(dir, rootchainMask) },
      responsePath: { get: pathOf(responseDir, ocspMask) },
    });
    Object.assign(shared, { source, ...settings });
    for (const domain of domains) {
      // "...pem" by "{domain}.pem" is the domain "..": its response would land outside.
      if (domain === "." || domain === ".." || domain.includes("/")) {
        config.problems.push(
          `Certificate "${
            path.join(dir, certMask.fill(domain))
          }" (${source}) gives the domain "${domain}", which cannot name a response; it is left out: rename the file`,
        );
        continue;
      }
      const target: Target = Object.create(shared);
      (target as { id: string }).id = domain;
      const outside = entry.fromInclude && outsideOcspFolder(target.responsePath, ocspFolder);
      if (outside) {
        throw new ExitError(
          `Config "${entry.file}": "${entry.key}.ocsp_mask" ("${entry.ocspMask}") puts the response of "${domain}" at "${target.responsePath}", ${outside}`,
          EXIT.configInvalid,
        );
      }
      targets.push(target);
    }
    if (entry.recursive) {
      for (const folder of folders) walk(path.join(relative, folder));
    }
  };
  walk("");
  return targets;
}

function domainTarget(entry: DomainEntry, config: Config): Target {
  const { ocspFolder } = config;
  for (const key of ["cert", "chain", "rootchain"] as const) {
    if (entry[key] !== undefined && !isFile(entry[key])) {
      throw new ExitError(
        `Config "${entry.file}": "domains.${entry.id}.${key}" names "${
          entry[key]
        }", which is not a file`,
        EXIT.configInvalid,
      );
    }
    if (entry[key] !== undefined) ownerMayRead(entry[key], entry);
  }
  const responsePath = path.resolve(ocspFolder, entry.ocsp);
  const outside = entry.fromInclude && outsideOcspFolder(responsePath, ocspFolder);
  if (outside) {
    throw new ExitError(
      `Config "${entry.file}": "domains.${entry.id}.ocsp" names "${entry.ocsp}", ${outside}`,
      EXIT.configInvalid,
    );
  }
  return {
    id: entry.id,
    certPath: entry.cert,
    chainPath: entry.chain,
    rootchainPath: entry.rootchain,
    responsePath,
    source: `domains of config "${entry.file}"`,
    ...certificateSettings(entry, config),
  };
}

/**
 * Every certificate of the config: scanned ones first, then `domains`.
 * Two targets with one id, or one response file, are a config error.
 */
function discoverTargets(
  config: Config,
  memo?: ScanMemo,
  warnings: string[] = [],
): Target[] {
  // An include's entry that cannot be used fails its own certificates, not the run.
  const included = new Set<Target>();
  const contained = (entry: EntryOrigin, find: () => Target[]) => {
    if (!entry.fromInclude) return find();
    try {
      const found = find();
      for (const target of found) included.add(target);
      return found;
    } catch (error) {
      config.problems.push(
        `"${entry.key}" of include "${entry.file}" is left out, its certificates are not renewed: ${
          errorText(error)
        }`,
      );
      return [];
    }
  };
  const targets = [
    ...config.scanKeys.flatMap((entry) =>
      contained(entry, () => scanForTargets(entry, config, memo, warnings))
    ),
    ...config.domains.flatMap((entry) => contained(entry, () => [domainTarget(entry, config)])),
  ];
  const byId = new Map<string, Target>();
  const byResponse = new Map<string, Target>();
  // One scan entry alone cannot write one response twice without one id twice:
  // its responses are its unique file names, in its folders' mirrors.
  const oneScan = config.scanKeys.length + config.domains.length === 1;
  const leftOut = new Set<Target>();
  // Of two that clash, an include's is left out alone: another team's mistake, or
  // another user's copy, must not stop the main config's certificates.
  const clash = (earlier: Target, later: Target, problem: string) => {
    const culprit = included.has(later) ? later : included.has(earlier) ? earlier : undefined;
    if (!culprit) throw new ExitError(problem, EXIT.configInvalid);
    config.problems.push(`${problem}; the one of ${culprit.source} is left out`);
    leftOut.add(culprit);
    return culprit;
  };
  for (const target of targets) {
    const sameId = byId.get(target.id);
    if (
      sameId && !leftOut.has(sameId) && clash(
          sameId,
          target,
          `Certificate id "${target.id}" appears twice: "${sameId.certPath}" (${sameId.source}) and "${target.certPath}" (${target.source})`,
        ) === target
    ) continue;
    byId.set(target.id, target);
    if (oneScan) continue;
    const sameResponse = byResponse.get(target.responsePath);
    if (
      sameResponse && !leftOut.has(sameResponse) && clash(
          sameResponse,
          target,
          `Certificates "${sameResponse.id}" and "${target.id}" would both write the response "${target.responsePath}"`,
        ) === target
    ) continue;
    byResponse.set(target.responsePath, target);
  }
  return leftOut.size > 0 ? targets.filter((target) => !leftOut.has(target)) : targets;
}

/**
 * Why a response path is one of the names ocspbot keeps for itself (the
 * state, its lock, the metrics, a temporary or rejected answer's name), or
 * undefined: an include naming the lock would replace it mid-run, and let a
 * second run in beside the first. Asked before a response is fetched, so
 * that an hour with nothing due pays nothing for it.
 */
function reservedName(responsePath: string, config: Config): string | undefined {
  const own = new Map([
    [path.resolve(config.stateFile), "the state file"],
    [path.resolve(`${config.stateFile}.lock`), "the lock file"],
    ...(config.metricsFile ? [[path.resolve(config.metricsFile), "metrics_file"] as const] : []),
  ]);
  const kept = own.get(path.resolve(responsePath)) ??
    (/^\..+\.(?:rejected|[0-9a-f]{16}\.tmp)$/.test(path.basename(responsePath))
      ? "a name ocspbot gives temporary and rejected answers"
      : undefined);
  return kept &&
    `Its response "${responsePath}" would be ${kept}; ocspbot refuses it: choose another "ocsp" or "ocsp_mask"`;
}

/**
 * Throws unless the user whose include names `file` could read it (a
 * folder: list and enter it), by its owner's or everybody's bits; groups are
 * not counted. Root reads for an include only what its owner could: a
 * root-only folder's names must not reach a log through somebody's include.
 */
function ownerMayRead(file: string, entry: EntryOrigin): void {
  const owner = entry.owner;
  if (owner === undefined) return;
  const may = (at: string, need: number) => {
    const info = Deno.statSync(at);
    const bits = info.uid === owner ? (info.mode ?? 0) >> 6 : info.mode ?? 0;
    return (bits & need) === need;
  };
  // Every folder on the way must let the owner through (search), then the thing itself be readable.
  const resolved = Deno.realPathSync(file);
  const parts = resolved.split("/").filter(Boolean);
  const folders = parts.slice(0, -1).map((_, i) => "/" + parts.slice(0, i + 1).join("/"));
  const blocked = ["/", ...folders].find((folder) => !may(folder, 0o1));
  const target = Deno.statSync(resolved);
  if (blocked || !may(resolved, target.isDirectory ? 0o5 : 0o4)) {
    throw new Error(
      `"${file}" is not readable by uid ${owner}, whose include names it${
        blocked ? ` (it may not pass "${blocked}")` : ""
      }; an include may name only what its owner could read`,
    );
  }
}

/** The certificates `--only` asks for, all without it; an id not configured is 252. */
function selectTargets(targets: Target[], only: string[]): Target[] {
  if (only.length === 0) return targets;
  const unknown = only.filter((id) => !targets.some((target) => target.id === id));
  if (unknown.length > 0) {
    throw new ExitError(
      `--only names certificate ids that are not configured: ${
        unknown.map((id) => `"${id}"`).join(", ")
      }`,
      EXIT.badArguments,
    );
  }
  return targets.filter((target) => only.includes(target.id));
}

// ---------------------------------------------------------------- inspect --
// What a certificate and its stored response are, read and not judged: the
// certificate's fields, the state's memory of what was verified, and Facts.

/**
 * node:crypto, loaded on first use: the hourly run that finds nothing changed
 * hashes and parses nothing, and loading it costs 30 ms and 5 MiB at start.
 */
function nodeCrypto(): typeof import("node:crypto") {
  return process.getBuiltinModule("node:crypto");
}

/** Reads one input file with `read`; the error names what it is and where. */
function readInput<T>(file: string, what: string, read: (file: string) => T): T {
  try {
    return read(file);
  } catch (error) {
    throw new Error(`Cannot read ${what} "${file}": ${errorText(error)}`);
  }
}

/**
 * The DER of OID 1.3.6.1.5.5.7.1.24 (TLS Feature, RFC 7633). node:crypto
 * lists no extensions, and this OID appears in a certificate only as the
 * extension's name.
 */
const TLS_FEATURE_OID = new Uint8Array([
  0x06,
  0x08,
  0x2b,
  0x06,
  0x01,
  0x05,
  0x05,
  0x07,
  0x01,
  0x18,
]);

function containsBytes(haystack: Uint8Array, needle: Uint8Array): boolean {
  outer: for (let i = 0; i <= haystack.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) {
      if (haystack[i + j] !== needle[j]) continue outer;
    }
    return true;
  }
  return false;
}

function sha256(bytes: Uint8Array | string): string {
  return nodeCrypto().createHash("sha256").update(bytes).digest("base64url").slice(0, HASH_CHARS);
}

/** The PEM certificate blocks of a file, in order; keys and other blocks are left out. */
function pemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
}

/**
 * Whether `candidate` issued `cert`, as far as node:crypto can tell: their
 * names and key identifiers match (OpenSSL's X509_check_issued) and the
 * signature verifies. undefined when the names match but node:crypto cannot
 * check the signature: it verifies no RSASSA-PSS signature (AD CS's
 * AlternateSignatureAlgorithm) and reads no RSASSA-PSS key; openssl must.
 */
function issuedBy(cert: X509Certificate, candidate: X509Certificate): boolean | undefined {
  if (!cert.checkIssued(candidate)) return false;
  try {
    if (cert.verify(candidate.publicKey)) return true;
  } catch {
    // "unsupported x509 public key type": an RSASSA-PSS key.
  }
  return undefined;
}

function readX509(certificate: Uint8Array | string, file: string): X509Certificate {
  try {
    return new (nodeCrypto().X509Certificate)(certificate);
  } catch (error) {
    throw new Error(`Cannot read certificate "${file}": ${errorText(error)}`);
  }
}

/** A certificate of a file, parsed, with its PEM text. */
interface FileCertificate {
  x509: X509Certificate;
  pem: string;
}

/** A certificate's validity: all the renewal rule needs of it. */
interface Validity {
  notBefore: Date;
  notAfter: Date;
}

/** What the bot needs to know of a certificate. */
export interface CertificateInfo extends Validity {
  ocspUrls: string[];
  /** It carries the TLS Feature status_request extension (RFC 7633). */
  mustStaple: boolean;
}

/**
 * The certificates of a PEM file a server uses, in order, and its leaf: the
 * one that issued no other (HAProxy's crt bundles hold the key, the leaf and
 * the intermediates in any order; nginx's fullchain the leaf first). Blocks
 * that are not certificates, a private key among them, are skipped and not
 * kept. A DER file is one certificate.
 */
function parseBundle(bytes: Uint8Array, file: string): {
  certificates: FileCertificate[];
  leaf: FileCertificate;
} {
  const pems = pemCertificates(decoder.decode(bytes));
  if (pems.length === 0) {
    const x509 = readX509(bytes, file);
    const only = { x509, pem: x509.toString() };
    return { certificates: [only], leaf: only };
  }
  const certificates = pems.map((pem) => ({ x509: readX509(pem, file), pem }));
  const leaf =
    certificates.find((candidate) =>
      !certificates.some((other) => other !== candidate && other.x509.checkIssued(candidate.x509))
    ) ?? certificates[0];
  return { certificates, leaf };
}

function readBundle(file: string, what: string, files: Files) {
  return parseBundle(
    readInput(file, what, (name) => files.read(name, "certificate", "any").bytes),
    file,
  );
}

/** The name a client asks for a certificate by (SNI): its first DNS name, else its CN. */
function certificateName(cert: X509Certificate): string | undefined {
  const dns = /(?:^|, )DNS:([^,\s]+)/.exec(cert.subjectAltName ?? "")?.[1];
  return dns ?? /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
}

/** Reads a certificate's dates, OCSP URLs and Must-Staple in-process: no openssl needed. */
export function certificateInfo(cert: X509Certificate): CertificateInfo {
  const ocspUrls = (cert.infoAccess ?? "").split("\n")
    .filter((line) => line.startsWith("OCSP - URI:"))
    .map((line) => line.slice("OCSP - URI:".length).trim());
  return {
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
    ocspUrls,
    mustStaple: containsBytes(cert.raw, TLS_FEATURE_OID),
  };
}

/** A target's files as parsed in a run: its cert file, and what openssl is told. */
interface ParsedFiles {
  /** The cert file's bytes, as read once. */
  bytes: Uint8Array;
  bundle: ReturnType<typeof parseBundle>;
  request?: RequestInput;
}

/**
 * A target's cert file, read and parsed once a run: deciding and asking
 * openssl both need it, but only when the state cannot answer.
 */
function parsedFiles(target: Target, context: RunContext, read?: Uint8Array): ParsedFiles {
  let parsed = context.parsed.get(target);
  if (!parsed) {
    const bytes = read ?? readInput(
      target.certPath,
      "certificate",
      (name) => context.files.read(name, "certificate", "any").bytes,
    );
    parsed = { bytes, bundle: parseBundle(bytes, target.certPath) };
    context.parsed.set(target, parsed);
  }
  return parsed;
}

/**
 * What openssl is told about a certificate: its issuer (the chain file when
 * its first certificate is the one, else the issuer's PEM on stdin) and the
 * leaf's serial, as `-serial` takes it. With -serial, openssl needs no file
 * holding the leaf alone.
 */
interface RequestInput {
  issuerFile: string;
  issuerPem?: string;
  serial: string;
}

/**
 * A certificate's serial as openssl's `-serial` reads it, sign included:
 * old private CAs issued negative serials, which node:crypto shows as their
 * two's complement bytes, and asking for those is asking for another
 * certificate (answered `unknown`).
 */
function serialArgument(certificate: Uint8Array): string {
  const bytes = certificateFields(certificate).serial;
  let value = bytes.reduce((sum, byte) => sum * 256n + BigInt(byte), 0n);
  if (bytes[0] & 0x80) value -= 1n << BigInt(8 * bytes.length);
  return value < 0n ? `-0x${(-value).toString(16)}` : `0x${value.toString(16)}`;
}

/**
 * What ocspbot reads of a certificate's DER itself: its serial's content
 * octets, its subject Name as DER, and the SHA-1 of its public key's bits
 * (what a ResponderID byKey holds, RFC 6960 4.2.1).
 */
function certificateFields(
  certificate: Uint8Array,
): { serial: Uint8Array; subject: Uint8Array; keyHash: string } {
  const [whole] = derElements(certificate);
  const [tbs] = derElements(certificate, whole.content, whole.end);
  const fields = derElements(certificate, tbs.content, tbs.end);
  // The version, [0], comes first unless it is the default, v1.
  const at = fields[0].tag === 0xa0 ? 1 : 0;
  const [serial, subject, spki] = [fields[at], fields[at + 4], fields[at + 5]];
  const [, bits] = derElements(certificate, spki.content, spki.end);
  // The BIT STRING's first octet counts its unused bits.
  const key = certificate.subarray(bits.content + 1, bits.end);
  return {
    serial: certificate.subarray(serial.content, serial.end),
    subject: certificate.subarray(subject.start, subject.end),
    keyHash: nodeCrypto().createHash("sha1").update(key).digest("hex"),
  };
}

/**
 * Whether openssl verifies `issuer`'s signature on `leaf`, with `issuer` as
 * the only trust anchor and no time checked: the issuer check for what
 * node:crypto cannot verify. The leaf goes through a temporary file, since
 * stdin carries the issuer.
 */
async function opensslVerifies(
  leaf: FileCertificate,
  issuer: FileCertificate,
  context: RunContext,
): Promise<boolean> {
  const file = Deno.makeTempFileSync({ prefix: "ocspbot-leaf-", suffix: ".pem" });
  context.files.temporary.add(file);
  try {
    Deno.writeTextFileSync(file, leaf.pem);
    const args = ["verify", "-partial_chain", "-no_check_time", "-CAfile", "/dev/stdin", file];
    return (await runOpenssl(args, context, issuer.pem)).code === 0;
  } finally {
    try {
      Deno.removeSync(file);
    } catch {
      // Gone already.
    }
    context.files.temporary.delete(file);
  }
}

/**
 * The leaf of the cert file and its issuer among every intermediate the cert
 * and chain files hold, whatever their order: openssl takes the first
 * certificate of `-issuer`'s file, and the wrong one makes it ask about
 * another certificate and fail late with "root ca not trusted". Throws
 * naming the files, before any request, when none issued the leaf.
 */
async function requestInput(target: Target, context: RunContext): Promise<RequestInput> {
  const parsed = parsedFiles(target, context);
  if (parsed.request) return parsed.request;
  const { leaf, certificates } = parsed.bundle;
  const chain = target.chainPath
    ? readBundle(target.chainPath, "chain", context.files).certificates
    : [];
  const candidates = [...chain, ...certificates.filter((c) => c !== leaf)];
  const verdicts = candidates.map((candidate) => issuedBy(leaf.x509, candidate.x509));
  let index = verdicts.indexOf(true);
  for (let i = 0; index < 0 && i < candidates.length; i++) {
    if (verdicts[i] === undefined && await opensslVerifies(leaf, candidates[i], context)) index = i;
  }
  if (index < 0) {
    const where = target.chainPath
      ? `Chain "${target.chainPath}" and certificate "${target.certPath}" hold`
      : `Certificate "${target.certPath}" holds`;
    throw new Error(
      `${where} no certificate that issued "${target.certPath}" (issuer "${leaf.x509.issuer}"); put the intermediate that signed it in ${
        target.chainPath ? "the chain file" : "the certificate file, or give a chain"
      }; no responder was asked`,
    );
  }
  const issuer = candidates[index];
  if (target.rootchainPath) {
    const anchors = readBundle(target.rootchainPath, "rootchain", context.files).certificates;
    if (anchoredIn(issuer.x509, [...chain, ...certificates, ...anchors], anchors) === false) {
      // OpenSSL 3.0 trusts the -issuer certificate it is given; newer versions do not.
      throw new Error(
        `Rootchain "${target.rootchainPath}" does not anchor the issuer of "${target.certPath}" (issuer "${leaf.x509.issuer}"): none of its certificates issued it, or a certificate above it; put that CA's root (and intermediates) in the rootchain; no responder was asked`,
      );
    }
  }
  const serial = serialArgument(leaf.x509.raw);
  const input: RequestInput = index === 0 && target.chainPath
    ? { issuerFile: target.chainPath, serial }
    : { issuerFile: "/dev/stdin", issuerPem: candidates[index].pem, serial };
  parsed.request = input;
  return input;
}

/** The version of the state file's format this ocspbot reads and writes. */
export const STATE_VERSION = 3;

/**
 * Characters of base64url SHA-256 kept to tell files apart: 132 bits, which
 * no accidental change collides with, at half the size in the state file.
 */
const HASH_CHARS = 22;

/** A file changed more recently than this gets no stamp: see fileStamp(). */
const STAMP_SETTLE_MS = 2000;

/**
 * What stat says of a file, so that an unchanged file need not be read
 * again, as git's index does: size, mtime, ctime, inode and device. A user
 * can set mtime back, but ctime moves with every change. Deno gives ctime in
 * whole seconds only, so a file changed in the last STAMP_SETTLE_MS gets no
 * stamp (""): it could change again within the same second, unseen.
 */
export function fileStamp(info: Deno.FileInfo, realNowMs: number): string {
  const mtime = info.mtime?.getTime();
  const ctime = info.ctime?.getTime();
  if (mtime === undefined || ctime === undefined || info.ino === null || info.dev === null) {
    return "";
  }
  if (realNowMs - Math.max(mtime, ctime) < STAMP_SETTLE_MS) return "";
  // Base 36: 100,000 records of four files each are most of the state file.
  return [info.size, mtime, Math.floor(ctime / 1000), info.ino, info.dev]
    .map((number) => number.toString(36)).join(".");
}

/** Seconds since 1970: how the state keeps times. */
function epochSeconds(time: Date): number {
  return Math.floor(time.getTime() / 1000);
}

/** `<stamp> <sha256>`: a file as the state remembers it. */
export function fileEntry(stamp: string, sha256: string): string {
  return `${stamp} ${sha256}`;
}

/** The hash part of a FileEntry. */
function entryHash(entry: string | undefined): string | undefined {
  return entry?.slice(entry.indexOf(" ") + 1);
}

/** The recorded entry, when its stamp says the file is unchanged. */
export function unchangedEntry(recorded: string | undefined, stamp: string): string | undefined {
  return stamp !== "" && recorded?.startsWith(`${stamp} `) ? recorded : undefined;
}

/** What the state file remembers of a good response ocspbot verified. */
interface VerifiedRecord {
  /**
   * The response, certificate, chain and rootchain it was verified with, in
   * that order, each as `<stamp> <sha256>` (FileEntry): a byte changed in any
   * of them, and it is verified again.
   */
  files: string[];
  /** Times in seconds since 1970: a state of 100,000 records stays small. */
  thisUpdate: number;
  nextUpdate?: number;
  /** What the certificate says, so that it need not be parsed again. */
  notBefore: number;
  notAfter: number;
  ocspUrls: string[];
  mustStaple: boolean;
  /** Set when the response stapled is a "revoked" answer (`on_revoked: staple`). */
  revoked?: { time?: number; reason?: string };
  /** ResponseReport.signerNotAfter. */
  signerNotAfter?: number;
}

/** What came of the last request to a responder about a certificate. */
type AttemptOutcome = "renewed" | "same" | "failed" | "revoked";

/** The state's memory of the last time ocspbot asked a responder about a certificate. */
export interface Attempt {
  /** Seconds since 1970, as every time in the state. */
  time: number;
  outcome: AttemptOutcome;
  /** What went wrong, for "failed" and "revoked". */
  message?: string;
  /** When the attempts that keep failing (or saying revoked) began. */
  failingSince?: number;
  revocationTime?: number;
  revocationReason?: string;
  /**
   * The thisUpdate of the latest revoked answer seen for the certificate:
   * no answer signed before it is stapled afterwards (a stale cache's "good").
   */
  revokedSeen?: number;
}

/** What the state file keeps for one response path. */
interface StateRecord {
  /** The good response ocspbot verified, while it is the one stored. */
  verified?: VerifiedRecord;
  attempt?: Attempt;
  push?: PendingPush;
}

/**
 * HAProxies that have not taken the stored response: every run pushes it to
 * them again until each does, and --check warns meanwhile. A fleet member
 * down during a renewal would otherwise staple the old response for days.
 */
interface PendingPush {
  sockets: string[];
  /** Seconds since 1970: when the first push to them failed. */
  since: number;
  /** Why the last push failed, socket by socket. */
  message: string;
}

/**
 * What a scan found in one folder with one set of masks, kept while the
 * folder's stamp stays the same: its entries cannot have changed, so the
 * next run need not list it.
 */
interface ScanRecord {
  stamp: string;
  /** The domains whose certificate, chain and rootchain were there, in order. */
  domains: string[];
  folders: string[];
  /**
   * Links that led to no file: their target may appear while the folder
   * stays as it is, so they are looked at again each run.
   */
  dangling?: string[];
  /** What a run says of certificates left out for a missing chain or rootchain. */
  skipped?: string[];
}

/**
 * An `on_change` that failed after renewals: the server still staples the
 * old responses, so every run runs it again, with these ids, until it
 * succeeds, and --check warns meanwhile.
 */
interface PendingChange {
  ids: string[];
  /** Seconds since 1970: when it first failed. */
  since: number;
  /** Why it failed last. */
  message: string;
}

/** The record to keep of a good response that verified. */
export function recordOf(
  report: ResponseReport,
  cert: CertificateInfo,
  files: string[],
): VerifiedRecord {
  return {
    files,
    ...(report.status === "revoked"
      ? {
        revoked: {
          time: report.revocationTime && epochSeconds(report.revocationTime),
          reason: report.revocationReason,
        },
      }
      : {}),
    thisUpdate: epochSeconds(report.thisUpdate!),
    nextUpdate: report.nextUpdate && epochSeconds(report.nextUpdate),
    signerNotAfter: report.signerNotAfter && epochSeconds(report.signerNotAfter),
    notBefore: epochSeconds(cert.notBefore),
    notAfter: epochSeconds(cert.notAfter),
    ocspUrls: cert.ocspUrls,
    mustStaple: cert.mustStaple,
  };
}

/**
 * The attempt to remember after asking a responder at `now`: failures and
 * revocations carry the time the failing began, which a success forgets.
 */
export function nextAttempt(
  previous: Attempt | undefined,
  outcome: AttemptOutcome,
  now: Date,
  details: Pick<Attempt, "message" | "revocationTime" | "revocationReason" | "revokedSeen"> = {},
): Attempt {
  const time = epochSeconds(now);
  // A revocation once seen is remembered whatever comes after it.
  const seen = Math.max(details.revokedSeen ?? -Infinity, previous?.revokedSeen ?? -Infinity);
  const revokedSeen = Number.isFinite(seen) ? { revokedSeen: seen } : {};
  if (outcome === "renewed" || outcome === "same") return { time, outcome, ...revokedSeen };
  const failing = previous?.outcome === "failed" || previous?.outcome === "revoked";
  return {
    time,
    outcome,
    ...details,
    ...revokedSeen,
    failingSince: failing ? previous.failingSince ?? previous.time : time,
  };
}

/**
 * What a record says about a stored response, if it may be trusted without
 * asking openssl: the response, certificate and chains are byte for byte
 * those it was verified with (`files`, as FileEntry), and it has not expired since.
 */
export function recallReport(
  record: VerifiedRecord | undefined,
  files: string[],
  now: Date,
): { report: ResponseReport; cert: CertificateInfo } | undefined {
  if (
    !Array.isArray(record?.files) || !Array.isArray(record.ocspUrls) ||
    record.files.length !== files.length ||
    files.some((entry, i) =>
      entry !== record.files[i] && entryHash(entry) !== entryHash(record.files[i])
    )
  ) {
    return undefined;
  }
  const time = (seconds: number) => new Date(seconds * 1000);
  const thisUpdate = time(record.thisUpdate);
  const nextUpdate = record.nextUpdate ? time(record.nextUpdate) : undefined;
  const cert = {
    notBefore: time(record.notBefore),
    notAfter: time(record.notAfter),
    ocspUrls: record.ocspUrls,
    mustStaple: record.mustStaple === true,
  };
  const signerNotAfter = record.signerNotAfter ? time(record.signerNotAfter) : undefined;
  const times = [thisUpdate.getTime(), cert.notBefore.getTime(), cert.notAfter.getTime()];
  if (
    times.some(Number.isNaN) || judgeTimes({ thisUpdate, nextUpdate, signerNotAfter }, now).problem
  ) {
    return undefined;
  }
  const report: ResponseReport = record.revoked
    ? {
      status: "revoked",
      verified: true,
      thisUpdate,
      nextUpdate,
      revocationTime: record.revoked.time === undefined ? undefined : time(record.revoked.time),
      revocationReason: record.revoked.reason,
    }
    : { status: "good", verified: true, thisUpdate, nextUpdate };
  if (signerNotAfter) report.signerNotAfter = signerNotAfter;
  return { report, cert };
}

/**
 * A state record as one line of the state file (format version 3):
 * `<key>\t<verified>\t<attempt>`. The verified record is its fields in a
 * fixed order, space-separated, times in base 36 seconds: the four files
 * (`<stamp>/<hash>`, `-` for none), thisUpdate, nextUpdate, notBefore,
 * notAfter, the responder certificate's end, must-staple, the OCSP URLs and
 * a revocation (`-` for what is missing). The attempt is JSON. undefined:
 * nothing worth keeping.
 */
function stateLine(key: string, record: StateRecord): string | undefined {
  const { verified: v, attempt, push } = record;
  if (!v && !attempt && !push) return undefined;
  const time = (seconds: number | undefined) => seconds === undefined ? "-" : seconds.toString(36);
  const verified = v
    ? [
      ...v.files.map((entry) => entry === "" ? "-" : entry.replace(" ", "/")),
      time(v.thisUpdate),
      time(v.nextUpdate),
      time(v.notBefore),
      time(v.notAfter),
      time(v.signerNotAfter),
      v.mustStaple ? "1" : "0",
      v.ocspUrls.length > 0 ? v.ocspUrls.map(encodeURIComponent).join(",") : "-",
      v.revoked
        ? `${v.revoked.time?.toString(36) ?? ""},${encodeURIComponent(v.revoked.reason ?? "")}`
        : "-",
    ].join(" ")
    : "";
  return `${key}\t${verified}\t${attempt ? JSON.stringify(attempt) : ""}${
    push ? `\t${JSON.stringify(push)}` : ""
  }`;
}

/** The record a stateLine() holds; undefined parts for what cannot be read. */
export function parseStateLine(line: string): StateRecord {
  const [, verified = "", attempt = "", push = ""] = line.split("\t");
  const record: StateRecord = {};
  const fields = verified.split(" ");
  if (fields.length === 12) {
    const time = (text: string) => text === "-" ? undefined : parseInt(text, 36);
    const [thisUpdate, nextUpdate, notBefore, notAfter, signerNotAfter] = fields.slice(4, 9)
      .map(time);
    const [revokedTime, revokedReason] = fields[11] === "-" ? [] : fields[11].split(",");
    record.verified = {
      files: fields.slice(0, 4).map((entry) => entry === "-" ? "" : entry.replace("/", " ")),
      thisUpdate: thisUpdate ?? NaN,
      ...(nextUpdate === undefined ? {} : { nextUpdate }),
      notBefore: notBefore ?? NaN,
      notAfter: notAfter ?? NaN,
      ...(signerNotAfter === undefined ? {} : { signerNotAfter }),
      mustStaple: fields[9] === "1",
      ocspUrls: fields[10] === "-" ? [] : fields[10].split(",").map(decodeURIComponent),
      ...(revokedTime === undefined ? {} : {
        revoked: {
          ...(revokedTime === "" ? {} : { time: parseInt(revokedTime, 36) }),
          ...(revokedReason ? { reason: decodeURIComponent(revokedReason) } : {}),
        },
      }),
    };
  }
  if (attempt !== "") {
    try {
      record.attempt = JSON.parse(attempt);
    } catch {
      // A mangled attempt is only history lost.
    }
  }
  if (push !== "") {
    try {
      const parsed = JSON.parse(push);
      if (
        Array.isArray(parsed.sockets) && typeof parsed.since === "number" &&
        typeof parsed.message === "string"
      ) record.push = parsed;
    } catch {
      // Lost, it is pushed again only with the next renewal.
    }
  }
  return record;
}

/**
 * The state file: by response path, the good response ocspbot verified and
 * the last request to a responder. Read once at the start, changed in
 * memory as the run learns, written at the end only when a record changed.
 * The state is ocspbot's own: this is the only place that reads or writes it.
 */
class State {
  #changed = false;

  /** The state's folder, ending in "/": keys are relative to it. */
  readonly #folder: string;

  #pendingChange?: PendingChange;

  private constructor(
    readonly file: string,
    /** The real clock when the state was read: what scans are stamped against. */
    readonly realNowMs: number,
    /**
     * Records by key (the response path, relative to the state's folder when
     * inside it): the line as read, parsed only when asked for, or the record
     * as this run changed it. A quiet hour parses each line once and keeps
     * nothing of it: 100,000 records cost their text, not their objects.
     */
    private readonly records: Map<string, string | StateRecord>,
    private readonly scans: Map<string, ScanRecord> = new Map(),
    pendingChange?: PendingChange,
  ) {
    this.#pendingChange = pendingChange;
    // Resolved once: path.resolve() asks the process for its cwd every time.
    this.#folder = path.dirname(path.resolve(file)) + "/";
  }

  /** A missing state is empty; a broken one only costs a verification of every response. */
  static load(file: string, log: Logger, files: Files, realNowMs: number): State {
    const empty = new State(file, realNowMs, new Map());
    const folder = files.folderOthersMayWrite(path.dirname(path.resolve(file)));
    if (folder) {
      log.warn(
        `State file "${file}" lies in folder "${folder.path}", which ${folder.who} may write: whoever can may delete what ocspbot remembers, a revocation seen included; set "state_file" to a folder only root writes`,
      );
    }
    let text: string;
    try {
      // Another user's link here could point at any file, which a warning would then describe.
      const read = files.read(file, "state", "trusted");
      if (!read.ours) {
        // The folder's owner could have written a line that calls a garbage staple verified.
        log.warn(
          `Ignoring state file "${file}": it is owned by uid ${read.info.uid}, writable by others or a second name of another file, so anyone could have written it; verifying every response, and it is replaced by the state`,
        );
        return empty;
      }
      text = decoder.decode(read.bytes);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        log.warn(
          `Ignoring state file: ${
            errorText(error)
          }; verifying every response, and it is replaced by the state`,
        );
      }
      return empty;
    }
    const headerEnd = text.indexOf("\n");
    let header;
    try {
      header = JSON.parse(headerEnd < 0 ? text : text.slice(0, headerEnd));
    } catch {
      // JSON.parse's message quotes the file, which need not be ocspbot's to show.
      header = undefined;
    }
    // Versions 1 and 2 (ocspbot 1.0) were one JSON document: verifying once more is all it costs.
    if (header?.version === 1 || header?.version === 2) return empty;
    if (typeof header?.version === "number" && header.version > STATE_VERSION) {
      log.warn(
        `State file "${file}" was written by a newer ocspbot (state version ${header.version}); ocspbot ${VERSION} rebuilds it in its own version ${STATE_VERSION}, verifying every response once`,
      );
      return empty;
    }
    if (header?.version !== STATE_VERSION || header.ocspbot !== "state") {
      log.warn(
        `Ignoring state file "${file}": not an ocspbot state file of version ${STATE_VERSION}; verifying every response`,
      );
      return empty;
    }
    const records = new Map<string, string>();
    for (let start = headerEnd + 1; start > 0 && start < text.length;) {
      const end = text.indexOf("\n", start);
      const line = text.slice(start, end < 0 ? text.length : end);
      const tab = line.indexOf("\t");
      if (tab > 0) records.set(line.slice(0, tab), line);
      start = end < 0 ? text.length : end + 1;
    }
    const pending = header.pendingChange;
    const valid = Array.isArray(pending?.ids) &&
      pending.ids.every((id: unknown) => typeof id === "string") &&
      typeof pending.since === "number" && typeof pending.message === "string";
    return new State(
      file,
      realNowMs,
      records,
      new Map(Object.entries(header.scans ?? {})),
      valid ? pending : undefined,
    );
  }

  /**
   * The key of a response path: relative to the state's folder when inside
   * it; quoted as JSON when a tab or a line break would end it early.
   */
  #key(responsePath: string): string {
    const folder = this.#folder;
    const key = responsePath.startsWith(folder) ? responsePath.slice(folder.length) : responsePath;
    return /^"|[\t\n\r]/.test(key) ? JSON.stringify(key) : key;
  }

  /** The last line parsed: a certificate's attempt and record are asked for one after the other. */
  #parsed?: { line: string; record: StateRecord };

  #record(key: string): StateRecord | undefined {
    const record = this.records.get(key);
    if (typeof record !== "string") return record;
    if (this.#parsed?.line !== record) {
      this.#parsed = { line: record, record: parseStateLine(record) };
    }
    return this.#parsed.record;
  }

  verified(responsePath: string): VerifiedRecord | undefined {
    return this.#record(this.#key(responsePath))?.verified;
  }

  attempt(responsePath: string): Attempt | undefined {
    return this.#record(this.#key(responsePath))?.attempt;
  }

  setVerified(responsePath: string, verified: VerifiedRecord | undefined): void {
    const key = this.#key(responsePath);
    const record = this.#record(key);
    if (verified === undefined && record?.verified === undefined) return;
    this.records.set(key, { ...record, verified });
    this.#changed = true;
  }

  /** What the last scan of `folder` with `masks` found, while its stamp is `stamp`. */
  scanned(folder: string, masks: string, stamp: string): ScanRecord | undefined {
    const scan = this.scans.get(`${folder}\n${masks}`);
    return scan?.stamp === stamp ? scan : undefined;
  }

  /**
   * Records a scan. Only a scan that found something else is worth writing
   * the state for: a folder whose other files change every run (logs, the
   * state itself) would otherwise rewrite the state every run. A new stamp
   * alone is kept when the state is written anyway.
   */
  setScanned(folder: string, masks: string, scan: ScanRecord): void {
    const key = `${folder}\n${masks}`;
    const before = this.scans.get(key);
    this.scans.set(key, scan);
    const same = (a: string[] = [], b: string[]) =>
      a.length === b.length && a.every((item, i) => item === b[i]);
    if (!same(before?.domains, scan.domains) || !same(before?.folders, scan.folders)) {
      this.#changed = true;
    }
  }

  /** The on_change that failed and waits to be run again, if one does. */
  get pendingChange(): PendingChange | undefined {
    return this.#pendingChange;
  }

  set pendingChange(pending: PendingChange | undefined) {
    if (pending === undefined && this.#pendingChange === undefined) return;
    this.#pendingChange = pending;
    this.#changed = true;
  }

  pendingPush(responsePath: string): PendingPush | undefined {
    return this.#record(this.#key(responsePath))?.push;
  }

  setPendingPush(responsePath: string, push: PendingPush | undefined): void {
    const key = this.#key(responsePath);
    const record = this.#record(key);
    if (push === undefined && record?.push === undefined) return;
    this.records.set(key, { ...record, push });
    this.#changed = true;
  }

  setAttempt(responsePath: string, attempt: Attempt): void {
    const key = this.#key(responsePath);
    this.records.set(key, { ...this.#record(key), attempt });
    this.#changed = true;
  }

  /**
   * Writes the state atomically when it changed: a header line, then a line
   * per response (unchanged ones as they were read). Records of other
   * configs sharing the folder are kept while their response exists.
   */
  async save(covered: (responsePath: string) => boolean, files: Files): Promise<string[]> {
    if (!this.#changed) return [];
    const folder = this.#folder;
    const lines = [
      JSON.stringify({
        ocspbot: "state",
        version: STATE_VERSION,
        scans: Object.fromEntries(this.scans),
        ...(this.#pendingChange ? { pendingChange: this.#pendingChange } : {}),
      }),
    ];
    for (const [key, record] of this.records) {
      const line = typeof record === "string" ? record : stateLine(key, record);
      if (line === undefined) continue;
      const unquoted = key.startsWith('"') ? JSON.parse(key) : key;
      const responsePath = path.isAbsolute(unquoted) ? unquoted : path.join(folder, unquoted);
      if (covered(responsePath) || files.entry(responsePath)) lines.push(line);
    }
    const text = encoder.encode(lines.join("\n") + "\n");
    const warnings = await files.write(this.file, text, true);
    this.#changed = false;
    return warnings;
  }
}

/** What inspect() found of a certificate and its stored response: read, not judged. */
interface Facts {
  cert: CertificateInfo;
  stored?: ResponseReport;
  /** The stored response as a FileEntry, when there is one. */
  storedEntry?: string;
  /** The certificate, chain and rootchain as FileEntry: what a new response is verified with. */
  inputs: string[];
  /** The responders to ask, in order: `ocsp_responder_uri`, else the certificate's. */
  urls: string[];
}

/**
 * A file as the state remembers it: the recorded entry while stat says the
 * file is unchanged, else what it holds now, hashed.
 */
function identify(
  file: string,
  info: Deno.FileInfo,
  recorded: string | undefined,
  what: string,
  files: Files,
  realNowMs: number,
): { entry: string; stamp: string; bytes?: Uint8Array } {
  const stamp = fileStamp(info, realNowMs);
  const unchanged = unchangedEntry(recorded, stamp);
  if (unchanged) return { entry: unchanged, stamp };
  // The stored response lies where others may write: no link of theirs is read.
  const [kind, links] = what === "stored response"
    ? ["response", "trusted"] as const
    : ["certificate", "any"] as const;
  const bytes = readInput(file, what, (name) => files.read(name, kind, links).bytes);
  return { entry: fileEntry(stamp, sha256(bytes)), stamp, bytes };
}

/**
 * What stat says of the stored response; undefined when there is none yet,
 * and why not, when what is there is no response to read: another user's
 * link (which could point at any file) or no regular file (a FIFO would hang
 * the run). One the state remembers is looked at directly; for others the
 * folder's listing says whether there is one, without a failing stat.
 */
function storedResponseInfo(
  file: string,
  remembered: boolean,
  files: Files,
): Deno.FileInfo | string | undefined {
  try {
    if (!remembered && !files.entry(file)) return undefined;
    let info = Deno.lstatSync(file);
    if (info.isSymlink) {
      if (!files.trusts(info)) return untrustedLinkText(file, info);
      info = Deno.statSync(file);
    }
    return info.isFile ? info : `"${file}" is not a regular file`;
  } catch (error) {
    // A link to a response not written yet.
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`Cannot read stored response "${file}": ${errorText(error)}`);
  }
}

/**
 * Reads a target's files and stored response and decides. While stat says
 * none of the four files changed since the state recorded them verified, it
 * costs four stats: no file is read, no openssl process started. A file whose
 * stat changed is hashed, and only a changed byte means verifying again.
 */
async function inspect(target: Target, context: RunContext): Promise<Facts> {
  const { config, now, state } = context;
  const record = state.verified(target.responsePath);
  const identified = ([
    [target.certPath, "certificate"],
    [target.chainPath, "chain"],
    [target.rootchainPath, "rootchain"],
  ] as const).map(([file, what], i) =>
    file === undefined ? undefined : identify(
      file,
      context.files.stat(file, what),
      record?.files?.[i + 1],
      what,
      context.files,
      context.world.clock(),
    )
  );
  // A chain or rootchain left out is "" in the record: nothing to compare.
  const inputs = identified.map((found) => found?.entry ?? "");
  const certificate = identified[0]!;
  let found = storedResponseInfo(target.responsePath, record !== undefined, context.files);
  let storedInfo = typeof found === "string" ? undefined : found;
  let storedEntry: string | undefined;
  let storedBytes: Uint8Array | undefined;
  try {
    if (storedInfo) {
      const what = "stored response";
      ({ entry: storedEntry, bytes: storedBytes } = identify(
        target.responsePath,
        storedInfo,
        record?.files?.[0],
        what,
        context.files,
        context.world.clock(),
      ));
    }
  } catch (error) {
    // Whatever is there is no staple: a new one replaces it.
    found = errorText(error);
    storedInfo = undefined;
  }
  const files = storedEntry ? [storedEntry, ...inputs] : [];
  const recalled = storedEntry ? recallReport(record, files, now) : undefined;
  if (recalled && files.some((entry, i) => entry !== record!.files[i])) {
    state.setVerified(target.responsePath, { ...record!, files });
  }
  let cert = recalled?.cert;
  if (!cert) {
    // Judged by the very bytes its entry hashes: a live/ link re-pointed meanwhile
    // must not record one certificate's response under the other's hash.
    const parsed = parsedFiles(target, context, certificate.bytes);
    if (!certificate.bytes) inputs[0] = fileEntry(certificate.stamp, sha256(parsed.bytes));
    cert = certificateInfo(parsed.bundle.leaf.x509);
  }
  let stored: ResponseReport | undefined = recalled?.report;
  if (typeof found === "string") {
    stored = { verified: false, problem: found };
    state.setVerified(target.responsePath, undefined);
  } else if (storedInfo && !stored) {
    stored = storedInfo.size === 0
      ? { verified: false, problem: "the file is empty" }
      : await checkStoredResponse(target, storedBytes, context);
    const staple = stored.verified && isStaple(stored, config.policy);
    state.setVerified(target.responsePath, staple ? recordOf(stored, cert, files) : undefined);
  }
  const urls = target.responderUri ? [target.responderUri] : cert.ocspUrls;
  return { cert, storedEntry, stored, inputs, urls };
}

// ------------------------------------------------------------------ rules --
// The policy, pure: when a response stops being usable (judgeTimes), which
// answer of several counts, what replaces what (rejectFetched), and when a
// certificate is renewed (planTarget). The run, --check, JSON, the metrics
// and the probe read these; none computes a response's window itself.

/** What openssl said about a response it parsed and verified. */
export interface ResponseReport {
  status?: CertStatus;
  thisUpdate?: Date;
  nextUpdate?: Date;
  revocationTime?: Date;
  revocationReason?: string;
  /**
   * When the certificate that signed the response ends (its ResponderID
   * names it among the certificates it carries: a delegated responder's),
   * whose end makes TLS clients refuse the staple before its nextUpdate
   * does. Other certificates it carries do not count.
   */
  signerNotAfter?: Date;
  /**
   * How many answers (SingleResponses) it holds for this certificate, and
   * for others: HAProxy loads a response with exactly one.
   */
  answers?: { ours: number; others: number };
  /** The times of its other answers for this certificate: each must pass as the first. */
  alsoAnswered?: Pick<ResponseReport, "thisUpdate" | "nextUpdate">[];
  verified: boolean;
  /** Why it did not verify or could not be read. */
  problem?: string;
  /** The OCSP response status when it is not "successful" (RFC 6960 4.2.1). */
  responderError?: OcspErrorStatus;
}

/** Whether a certificate's response is renewed now, and why. */
interface Decision {
  due: boolean;
  reason: string;
  renewAt?: Date;
}

/**
 * What to do with a certificate: leave it alone (and why), report that it
 * can never be stapled as configured, keep its fresh response until
 * `renewAt`, or renew it now from `urls`.
 */
export type Plan =
  | { kind: "skip"; why: SkipReason; reason: string; renewAt?: undefined }
  | { kind: "fail"; reason: string; renewAt?: undefined }
  | { kind: "fresh"; renewAt: Date; reason: string }
  | { kind: "renew"; urls: string[]; reason: string; renewAt?: Date };

type SkipReason = "no OCSP URL" | "expired";

/** Lifespan assumed for a response without nextUpdate, as Apache mod_md. */
const ASSUMED_LIFESPAN_MS = 12 * 3600_000;

/** How long after its notBefore a certificate may be unknown to its responder. */
const NEW_CERTIFICATE_GRACE_MS = 15 * 60_000;

/** Clock skew tolerated in a fresh response's thisUpdate (openssl's own). */
const CLOCK_SKEW_MS = 5 * 60_000;

/** A time as a person reads it in a log: `2026-11-24 01:55:18 UTC`. */
function formatTime(time: Date): string {
  const iso = time.toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
}

/**
 * When a response stops being one a TLS client accepts: its nextUpdate, or
 * for a response without one (RFC 6960 allows it) thisUpdate plus the
 * assumed 12 hours; earlier when the responder certificate it carries ends
 * first. Only for a response with a thisUpdate.
 */
function responseExpiry(
  report: Pick<ResponseReport, "thisUpdate" | "nextUpdate" | "signerNotAfter">,
): number {
  const expiry = report.nextUpdate?.getTime() ??
    report.thisUpdate!.getTime() + ASSUMED_LIFESPAN_MS;
  return Math.min(expiry, report.signerNotAfter?.getTime() ?? Infinity);
}

/**
 * The one judgement of a response's times, for a fetched answer, a stored
 * one and one a server staples alike: when it stops being usable (`end`:
 * responseExpiry(), and the certificate's notAfter when it comes first),
 * and why no client would accept it now (`problem`): no thisUpdate, a
 * nextUpdate before its thisUpdate (OpenSSL: "nextupdate before
 * thisupdate"; HAProxy ignores such a file), a thisUpdate ahead of this
 * machine's clock by more than CLOCK_SKEW_MS, or an end already past.
 */
function judgeTimes(
  report: Pick<ResponseReport, "thisUpdate" | "nextUpdate" | "signerNotAfter" | "alsoAnswered">,
  now: Date,
  cert?: Pick<Validity, "notAfter">,
): { end?: Date; problem?: string; outlives?: boolean } {
  // Every answer for the certificate must pass (mozilla::pkix checks each).
  for (const other of report.alsoAnswered ?? []) {
    const { problem } = judgeTimes({ ...other, signerNotAfter: report.signerNotAfter }, now);
    if (problem) return { problem: `holds a second answer for this certificate that ${problem}` };
  }
  const { thisUpdate, nextUpdate } = report;
  if (!thisUpdate) return { problem: "has no thisUpdate" };
  if (nextUpdate && nextUpdate.getTime() < thisUpdate.getTime()) {
    return {
      problem: `has its nextUpdate (${formatTime(nextUpdate)}) before its thisUpdate (${
        formatTime(thisUpdate)
      }), which clients refuse`,
    };
  }
  const own = responseExpiry(report);
  const end = usableUntil(report, cert)!;
  // A response that outlives its certificate: what counts is the certificate's end.
  const outlives = cert !== undefined && cert.notAfter.getTime() <= own;
  const ahead = thisUpdate.getTime() - now.getTime();
  if (ahead > CLOCK_SKEW_MS) {
    return {
      end,
      problem: `has a thisUpdate (${formatTime(thisUpdate)}) ${
        Math.round(ahead / 60_000)
      } min ahead of this machine's clock, in the future: check this machine's time (NTP), or the responder's`,
    };
  }
  if (now.getTime() >= own) {
    const why = report.nextUpdate
      ? signerEndsFirst(report)
      : `, ${lifespanRule()} after its thisUpdate, as it has no nextUpdate`;
    return { end, outlives, problem: `expired at ${formatTime(new Date(own))}${why}` };
  }
  return { end, outlives };
}

/**
 * When a response stops being usable for a certificate: its own end
 * (responseExpiry()) or the certificate's notAfter, whichever comes first;
 * undefined without a thisUpdate.
 */
function usableUntil(
  report: Pick<ResponseReport, "thisUpdate" | "nextUpdate" | "signerNotAfter">,
  cert?: Pick<Validity, "notAfter">,
): Date | undefined {
  if (!report.thisUpdate) return undefined;
  return new Date(Math.min(responseExpiry(report), cert?.notAfter.getTime() ?? Infinity));
}

/** The rule for a response without nextUpdate, in words: ASSUMED_LIFESPAN_MS. */
function lifespanRule(): string {
  return `${ASSUMED_LIFESPAN_MS / 3600_000} hours`;
}

/** The stretch a response is good for: its dates clipped to the certificate's. */
function responseLifespan(
  cert: Validity,
  report: ResponseReport,
): { start: Date; end: Date } {
  const thisUpdate = report.thisUpdate!;
  return {
    start: new Date(Math.max(cert.notBefore.getTime(), thisUpdate.getTime())),
    end: new Date(
      Math.min(
        cert.notAfter.getTime(),
        responseExpiry(report),
      ),
    ),
  };
}

/**
 * When a good response is due: the earlier of `end - minimum_validity` and
 * the point where only `minimum_validity_percentage` of its lifespan is left.
 */
function renewalTime(
  policy: RenewalPolicy,
  cert: Validity,
  report: ResponseReport,
): Date {
  const { start, end } = responseLifespan(cert, report);
  const candidates: number[] = [];
  if (policy.minimumValidityMs !== undefined) {
    candidates.push(end.getTime() - policy.minimumValidityMs);
  }
  if (policy.minimumValidityPercentage !== undefined) {
    const elapsedShare = 1 - policy.minimumValidityPercentage / 100;
    candidates.push(
      start.getTime() + elapsedShare * (end.getTime() - start.getTime()),
    );
  }
  return new Date(Math.min(...candidates));
}

/** `, but its responder's certificate ends at <time>`, when that comes first. */
function signerEndsFirst(
  report: Pick<ResponseReport, "thisUpdate" | "nextUpdate" | "signerNotAfter">,
): string {
  const { signerNotAfter } = report;
  if (!signerNotAfter || responseExpiry(report) !== signerNotAfter.getTime()) return "";
  return `, but its responder's certificate ends at ${formatTime(signerNotAfter)}`;
}

/** ` since <time> (<reason>)`, as far as a revoked answer says them. */
function revocationText(
  revocation: { revocationTime?: Date; revocationReason?: string },
): string {
  const { revocationTime: time, revocationReason: reason } = revocation;
  return `${time ? ` since ${formatTime(time)}` : ""}${reason ? ` (${reason})` : ""}`;
}

/**
 * Whether a revocation stands for a certificate: the last answer said
 * revoked, or a revoked answer was seen that is newer than the stored
 * response (`storedSince`, its thisUpdate). The run, --check, the JSON report
 * and the metrics all ask this.
 */
function revocationStands(attempt: Attempt | undefined, storedSince?: Date): boolean {
  if (attempt?.outcome === "revoked") return true;
  const seen = attempt?.revokedSeen;
  return seen !== undefined && storedSince !== undefined && epochSeconds(storedSince) < seen;
}

/** Whether a verified response is one to staple: good, or revoked under `on_revoked: staple`. */
function isStaple(report: ResponseReport, policy: RenewalPolicy): boolean {
  return report.status === "good" || (policy.stapleRevoked === true && report.status === "revoked");
}

/** Decides whether to renew, from what is stored and the time given. */
export function planRenewal(
  policy: RenewalPolicy,
  cert: Validity,
  stored: ResponseReport | undefined,
  now: Date,
): Decision {
  if (!stored) return { due: true, reason: "no response stored yet" };
  if (!stored.verified) {
    return {
      due: true,
      reason: `stored response does not verify: ${stored.problem}`,
    };
  }
  if (!isStaple(stored, policy) || !stored.thisUpdate) {
    return {
      due: true,
      reason: `stored response says "${stored.status ?? "nothing"}"`,
    };
  }
  const expiredAt = new Date(responseExpiry(stored));
  const judged = judgeTimes(stored, now);
  if (judged.problem) {
    // Whatever the policy computes: a certificate not yet valid can put its renewal time later.
    return { due: true, renewAt: expiredAt, reason: `stored response ${judged.problem}` };
  }
  if (expiredAt.getTime() >= cert.notAfter.getTime()) {
    // A newer response could not outlive the certificate either: renewing it
    // every run would only reload servers every run.
    return {
      due: false,
      renewAt: cert.notAfter,
      reason: `stored response is ${stored.status} until ${
        formatTime(expiredAt)
      }, past the certificate's end at ${formatTime(cert.notAfter)}: nothing to renew before then`,
    };
  }
  const renewAt = renewalTime(policy, cert, stored);
  const due = now.getTime() >= renewAt.getTime();
  const expiry =
    (stored.nextUpdate
      ? `${stored.status} until ${formatTime(stored.nextUpdate)}`
      : `${stored.status}, without nextUpdate (assumed to live ${lifespanRule()})`) +
    signerEndsFirst(stored);
  return {
    due,
    renewAt,
    reason: due
      ? `stored response is ${expiry}, due since ${formatTime(renewAt)}`
      : `stored response is ${expiry}, renewal due at ${formatTime(renewAt)}`,
  };
}

/**
 * The one decision about a certificate, made alike by a run and by --check.
 * An expired certificate is left alone (renewing its response would succeed
 * every hour, and reload a server every hour), as is one that names no
 * responder, as public CAs' certificates no longer do. Else the response is
 * renewed when due, or now when forced.
 */
export function planTarget(
  facts: Pick<Facts, "cert" | "stored" | "urls">,
  policy: RenewalPolicy,
  now: Date,
  options: { forced?: boolean; forcedBy?: string; lastAttempt?: Attempt } = {},
): Plan {
  const { cert, stored, urls } = facts;
  if (now.getTime() >= cert.notAfter.getTime()) {
    return {
      kind: "skip",
      why: "expired",
      reason: `expired on ${
        formatTime(cert.notAfter)
      }; skipped, no responder asked: renew the certificate`,
    };
  }
  if (urls.length === 0 && cert.mustStaple) {
    return {
      kind: "fail",
      reason:
        `requires a staple (TLS Feature "Must-Staple", RFC 7633) but names no OCSP responder, so clients that check refuse every handshake: give it a "domains" entry with "ocsp_responder_uri", or use a certificate without Must-Staple`,
    };
  }
  if (urls.length === 0) {
    return {
      kind: "skip",
      why: "no OCSP URL",
      reason: "names no OCSP responder (no OCSP URL); skipped",
    };
  }
  if (options.forced) {
    return { kind: "renew", urls, reason: `renewal forced (${options.forcedBy ?? "--force"})` };
  }
  const decision = planRenewal(policy, cert, stored, now);
  const { lastAttempt } = options;
  if (!decision.due && lastAttempt?.outcome === "failed") {
    // A one-off failure (a --force while the responder was down) would else
    // keep --check warning until the renewal time, days later.
    return {
      kind: "renew",
      urls,
      reason: `the last attempt (${
        formatTime(new Date(lastAttempt.time * 1000))
      }) failed; trying again`,
      renewAt: decision.renewAt,
    };
  }
  return decision.due
    ? { kind: "renew", urls, reason: decision.reason, renewAt: decision.renewAt }
    : { kind: "fresh", reason: decision.reason, renewAt: decision.renewAt! };
}

/**
 * Whether an answer only says that the responder does not know the
 * certificate yet: responders often learn of a certificate minutes after it
 * is issued (the CA/Browser Forum's Baseline Requirements give CAs 15) and
 * answer `unauthorized` or `unknown` meanwhile. Not a failure worth a page.
 */
function notYetKnown(report: ResponseReport, cert: Validity, now: Date): boolean {
  const young = now.getTime() - cert.notBefore.getTime() < NEW_CERTIFICATE_GRACE_MS;
  const unknown = report.responderError === "unauthorized" ||
    (report.verified && report.status === "unknown");
  return young && unknown;
}

/**
 * Whether a good response has less than half of its renewal window left:
 * the window runs from the renewal time to expiry, and the first half is
 * the responder's to produce something newer. Past that, a responder that
 * keeps failing, or keeps sending the same response, needs a person.
 */
function runsShort(stored: ResponseReport, renewAt: Date | undefined, now: Date): boolean {
  if (!stored.thisUpdate || !renewAt) return false;
  const expiry = responseExpiry(stored);
  return expiry - now.getTime() < (expiry - renewAt.getTime()) / 2;
}

/**
 * Why a fetched response must not replace the stored one, or undefined when
 * it may: it must verify, say good, be current, and be no older.
 */
export function rejectFetched(
  fetched: ResponseReport,
  stored: ResponseReport | undefined,
  now: Date,
  policy: RenewalPolicy = {},
  context: { revokedSeen?: number; haproxy?: boolean } = {},
): string | undefined {
  if (fetched.responderError) return fetched.problem!;
  if (!fetched.verified) return `new response does not verify: ${fetched.problem}`;
  if (!isStaple(fetched, policy)) {
    const revoked = fetched.status === "revoked" ? revocationText(fetched) : "";
    return `responder says the certificate is ${fetched.status}${revoked}`;
  }
  const judged = judgeTimes(fetched, now);
  if (judged.problem?.startsWith("expired at ")) {
    return `new response expired already, at ${
      judged.problem.slice("expired at ".length)
    }: the responder serves a stale answer (a cache?); asking again next run`;
  }
  if (judged.problem) return `new response ${judged.problem}`;
  const thisUpdate = fetched.thisUpdate!;
  const { revokedSeen } = context;
  if (
    fetched.status === "good" && revokedSeen !== undefined && epochSeconds(thisUpdate) < revokedSeen
  ) {
    return `new response (good, thisUpdate ${
      formatTime(thisUpdate)
    }) was signed before the revoked answer seen at ${
      formatTime(new Date(revokedSeen * 1000))
    }: a stale answer (a cache?) does not undo a revocation`;
  }
  // Any answer stored, verified and not broken by its times, a revoked one
  // too, is newer than an older fetched one.
  const usable = stored?.verified && !judgeTimes(stored, now).problem ? stored : undefined;
  if (usable && thisUpdate.getTime() < usable.thisUpdate!.getTime()) {
    return `new response (thisUpdate ${formatTime(thisUpdate)}) is older than the stored one (${
      formatTime(usable.thisUpdate!)
    })`;
  }
  if (usable && isStaple(usable, policy)) {
    const [ends, storedEnds] = [responseExpiry(fetched), responseExpiry(usable)];
    if (ends < storedEnds) {
      return `new response ends at ${formatTime(new Date(ends))}${
        signerEndsFirst(fetched)
      }, before the stored one (${formatTime(new Date(storedEnds))}): the stored one stays`;
    }
  }
  const refused = context.haproxy ? haproxyRefuses(fetched) : undefined;
  if (refused) return `new response is one HAProxy will not load: ${refused}`;
  return undefined;
}

/**
 * Why HAProxy (2.6) will not load a response, or undefined: it ignores one
 * without nextUpdate ("missing nextupdate") and one holding several answers
 * ("multiple single responses").
 */
function haproxyRefuses(
  report: Pick<ResponseReport, "nextUpdate" | "answers">,
): string | undefined {
  if (!report.nextUpdate) return "it has no nextUpdate";
  const { ours = 1, others = 0 } = report.answers ?? {};
  if (ours + others > 1) return `it holds ${ours + others} answers, not one`;
  return undefined;
}

/**
 * Adds to openssl's report of a verified response what its DER says: the
 * signer's end, how many answers it holds, and, of several for this
 * certificate, the one that counts: revoked wins, as mozilla::pkix has it.
 */
function withContents(
  report: ResponseReport,
  response: Uint8Array,
  serial: Uint8Array,
): ResponseReport {
  if (!report.verified) return report;
  const contents = responseContents(response, serial);
  if (!contents || contents.ours.length === 0) {
    // What cannot be read here cannot be judged here: refused, not waved through.
    return {
      verified: false,
      problem: contents
        ? "it holds no answer for this certificate's serial"
        : "it is not strict DER (BER, or damaged), which clients that parse DER refuse",
    };
  }
  report.answers = { ours: contents.ours.length, others: contents.others };
  if (contents.signerNotAfter) report.signerNotAfter = contents.signerNotAfter;
  const revoked = contents.ours.find((answer) => answer.status === "revoked");
  const counted = revoked ?? contents.ours[0];
  if (revoked && report.status !== "revoked") {
    report.status = "revoked";
    report.thisUpdate = revoked.thisUpdate;
    report.nextUpdate = revoked.nextUpdate;
    report.revocationTime = revoked.revocationTime;
  }
  const others = contents.ours.filter((answer) => answer !== counted);
  if (others.length > 0) {
    report.alsoAnswered = others.map(({ thisUpdate, nextUpdate }) => ({ thisUpdate, nextUpdate }));
  }
  return report;
}

/**
 * Whether `issuer` reaches one of `anchors` (the rootchain) through
 * certificates of `pool`, each signed by the next (or is one): checked here,
 * so that what is stapled does not depend on the OpenSSL version. undefined
 * when node:crypto cannot check a signature on the way (RSASSA-PSS), and
 * openssl alone judges.
 */
function anchoredIn(
  issuer: X509Certificate,
  pool: FileCertificate[],
  anchors: FileCertificate[],
): boolean | undefined {
  const isAnchor = (cert: X509Certificate) =>
    anchors.some((anchor) => anchor.x509.raw.equals(cert.raw));
  let unsure = false;
  const seen = new Set<string>();
  let frontier = [issuer];
  for (let depth = 0; depth < 10 && frontier.length > 0; depth++) {
    const next: X509Certificate[] = [];
    for (const cert of frontier) {
      if (isAnchor(cert)) return true;
      seen.add(cert.fingerprint256);
      for (const { x509: parent } of pool) {
        if (seen.has(parent.fingerprint256)) continue;
        const issued = issuedBy(cert, parent);
        if (issued === undefined) unsure = true;
        if (issued !== false) next.push(parent);
      }
    }
    frontier = next;
  }
  return unsure ? undefined : false;
}

// ------------------------------------------------------------------ fetch --
// Asking the responder and verifying its answer: openssl does the
// cryptography; every process the bot starts goes through runProcess().

type CertStatus = "good" | "revoked" | "unknown";

/** The OCSP response statuses that carry no answer (RFC 6960 4.2.1), by code. */
const OCSP_ERROR_STATUSES = {
  1: "malformedRequest",
  2: "internalError",
  3: "tryLater",
  5: "sigRequired",
  6: "unauthorized",
} as const;

type OcspErrorStatus = (typeof OCSP_ERROR_STATUSES)[keyof typeof OCSP_ERROR_STATUSES];

/**
 * Answers that another request in the same run cannot change: the responder
 * does not serve this certificate or cannot read what openssl sends.
 */
const DEFINITIVE_ERROR_STATUSES: readonly OcspErrorStatus[] = [
  "malformedRequest",
  "sigRequired",
  "unauthorized",
];

/** How many HTTP redirects of a responder ocspbot follows, when it may. */
const MAX_REDIRECTS = 3;

/**
 * How long past `timeout` an openssl process may run before it is stopped:
 * openssl's own -timeout should fire first, with the better message.
 */
const KILL_GRACE_SECONDS = 2;

const MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec";

/** Reads openssl's `Nov 24 01:55:18 2026 GMT`. */
export function parseOpensslTime(text: string): Date {
  const match = /^(\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) (\d{4}) GMT$/.exec(
    text.trim(),
  );
  const month = match ? MONTHS.indexOf(match[1]) / 3 : -1;
  if (!match || !Number.isInteger(month) || month < 0) {
    throw new Error(`cannot read time "${text.trim()}"`);
  }
  const [day, hours, minutes, seconds, year] = match.slice(2).map(Number);
  return new Date(Date.UTC(year, month, day, hours, minutes, seconds));
}

/** openssl's error reasons that say little to a person, in plainer words. */
const OPENSSL_REASONS: Record<string, string> = {
  // ocsp_check_issuer() failed, and the signer was not explicitly trusted.
  "root ca not trusted":
    "signed by a certificate that is neither the certificate's issuer nor a responder the issuer authorised (root ca not trusted)",
};

/**
 * Makes openssl's error queue readable: `…:error:…:lib:func:reason:file:line:
 * detail` becomes `reason (detail)`.
 */
function summarizeOpensslErrors(stderr: string): string {
  const lines: string[] = [];
  for (const raw of stderr.split("\n")) {
    const line = raw.trim();
    if (!line || line === "Response verify OK") continue;
    const error = /^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:([^:]*):[^:]*:\d+:?(.*)$/
      .exec(line);
    const reason = error && (OPENSSL_REASONS[error[1]] ?? error[1]);
    const text = error ? (error[2] ? `${reason} (${error[2]})` : reason!) : line;
    if (!lines.includes(text)) lines.push(text);
  }
  return lines.join("; ");
}

/**
 * Reads what `openssl ocsp` printed about one certificate's response:
 * the status block on stdout, "Response verify OK" on stderr.
 */
export function parseOcspOutput(
  stdout: string,
  stderr: string,
  exitCode: number,
): ResponseReport {
  const report: ResponseReport = {
    verified: exitCode === 0 && /^Response verify OK$/m.test(stderr),
  };
  const responderError = /^Responder Error: (\S+) \((\d+)\)$/m.exec(stdout);
  const lines = stdout.split("\n");
  // `name: good`, or, after "name: WARNING: Status times invalid." and an error
  // line (a stale or early response), the status alone on its line.
  const status = /(?:^|: )(good|revoked|unknown)$/;
  const statusAt = lines.findIndex((line) => status.test(line));
  if (statusAt >= 0) {
    report.status = status.exec(lines[statusAt])![1] as CertStatus;
    for (const line of lines.slice(statusAt + 1)) {
      const field = /^\t(This Update|Next Update|Revocation Time|Reason): (.*)$/.exec(line);
      if (!field) break;
      if (field[1] === "Reason") report.revocationReason = field[2];
      else {
        const time = parseOpensslTime(field[2]);
        if (field[1] === "This Update") report.thisUpdate = time;
        else if (field[1] === "Next Update") report.nextUpdate = time;
        else report.revocationTime = time;
      }
    }
  }
  if (responderError) {
    const code = Number(responderError[2]);
    report.verified = false;
    report.responderError = OCSP_ERROR_STATUSES[code as keyof typeof OCSP_ERROR_STATUSES];
    report.problem = `responder answered "${
      report.responderError ?? responderError[1]
    }" (OCSP response status ${code}) instead of a response`;
  } else if (!report.verified || statusAt < 0) {
    report.verified = false;
    report.problem = summarizeOpensslErrors(stderr) ||
      (statusAt < 0 ? "no status for this certificate in the response" : "did not verify");
  }
  return report;
}

/**
 * The length of the DER element at the start of `bytes`, or undefined when
 * `bytes` does not start with a whole one. openssl writes the response it
 * verified there, followed by its report, so this is where the two part.
 */
export function derLength(bytes: Uint8Array, anyTag = false): number | undefined {
  if (bytes.length < 2 || (bytes[0] !== 0x30 && !anyTag)) return undefined;
  let length = bytes[1];
  let header = 2;
  if (length & 0x80) {
    const octets = length & 0x7f;
    if (octets === 0 || octets > 4 || bytes.length < 2 + octets) return undefined;
    length = 0;
    for (let i = 0; i < octets; i++) length = length * 256 + bytes[2 + i];
    header += octets;
  }
  return header + length <= bytes.length ? header + length : undefined;
}

/** The elements inside DER bytes from `start` to `end`: tag, where each starts and ends. */
function derElements(
  bytes: Uint8Array,
  start = 0,
  end = bytes.length,
): { tag: number; start: number; content: number; end: number }[] {
  const elements = [];
  for (let at = start; at < end;) {
    const length = derLength(bytes.subarray(at, end), true);
    if (length === undefined) throw new Error("not DER");
    const octets = bytes[at + 1] & 0x80 ? bytes[at + 1] & 0x7f : 0;
    elements.push({ tag: bytes[at], start: at, content: at + 2 + octets, end: at + length });
    at += length;
  }
  return elements;
}

interface OpensslResult {
  code: number;
  /** stdout's bytes: with `-respout -` the DER response comes first. */
  output: Uint8Array;
  stdout: string;
  stderr: string;
}

/**
 * The run was stopped by a signal (the run's `stop`, aborted with the
 * signal's name as reason); not a failure of the certificate at hand.
 */
class Interrupted extends Error {
  constructor(stop: AbortSignal) {
    super(`stopped by ${stop.reason}`);
  }
}

/** Waits `ms`; `stop` ends the wait with Interrupted. */
function pause(ms: number, stop: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (stop.aborted) return reject(new Interrupted(stop));
    const interrupt = () => {
      clearTimeout(timer);
      reject(new Interrupted(stop));
    };
    const timer = setTimeout(() => {
      stop.removeEventListener("abort", interrupt);
      resolve();
    }, ms);
    stop.addEventListener("abort", interrupt, { once: true });
  });
}

/**
 * Runs a program to its end or its deadline: stdin closed, output captured.
 * An interruption stops it and throws Interrupted.
 */
async function runProcess(
  program: string,
  args: string[],
  deadlineSeconds: number,
  context: Pick<RunContext, "stop" | "world">,
  options: { env?: Record<string, string>; input?: string } = {},
): Promise<{ output: Deno.CommandOutput; timedOut: boolean }> {
  const { stop, world } = context;
  // One controller per process, let go of when it ends: AbortSignal.any() and
  // AbortSignal.timeout() keep every process of a run (and its output) alive.
  const kill = new AbortController();
  let timedOut = false;
  const deadline = setTimeout(() => {
    timedOut = true;
    kill.abort();
  }, deadlineSeconds * 1000);
  const interrupt = () => kill.abort();
  stop.addEventListener("abort", interrupt);
  let output: Deno.CommandOutput;
  try {
    const command = new Deno.Command(program, {
      args,
      // The run's environment, whatever the process's: a test's own is passed on.
      ...(world.env
        ? { clearEnv: true, env: { ...world.env, ...options.env } }
        : { env: options.env }),
      stdin: options.input === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      signal: kill.signal,
    });
    if (options.input === undefined) {
      // Collected natively at its size; a spawned child's output comes through
      // 64 KiB stream chunks, which doubled a first run's memory.
      output = await command.output();
    } else {
      const child = command.spawn();
      const writer = child.stdin.getWriter();
      // A child that ends without reading its input says why on stderr.
      await writer.write(encoder.encode(options.input)).catch(() => {});
      await writer.close().catch(() => {});
      output = await child.output();
    }
  } catch (error) {
    if (stop.aborted) throw new Interrupted(stop);
    throw error;
  } finally {
    clearTimeout(deadline);
    stop.removeEventListener("abort", interrupt);
  }
  if (stop.aborted) throw new Interrupted(stop);
  return { output, timedOut };
}

/**
 * Runs `openssl_executable` for a fetch or a verification, so that their
 * timeout and the wording of their failures live in one place; --check's
 * handshakes (Prober) and on_change go to runProcess() directly.
 */
async function runOpenssl(
  args: string[],
  context: Pick<RunContext, "config" | "stop" | "world">,
  input?: string,
): Promise<OpensslResult> {
  const executable = context.config.opensslExecutable;
  const deadlineSeconds = context.config.timeoutSeconds + KILL_GRACE_SECONDS;
  let run: { output: Deno.CommandOutput; timedOut: boolean };
  try {
    run = await runProcess(executable, args, deadlineSeconds, context, { input });
  } catch (error) {
    if (error instanceof Interrupted) throw error;
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(`Cannot find openssl executable "${executable}"`);
    }
    throw new Error(`Cannot run openssl executable "${executable}": ${errorText(error)}`);
  }
  if (run.timedOut) {
    throw new OpensslTimeout(
      `openssl ${
        args[0]
      } did not finish within ${deadlineSeconds} s and was stopped (config key "timeout")`,
    );
  }
  const { output } = run;
  return {
    code: output.code,
    output: output.stdout,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** openssl got no answer at all: worth another try, or another URL. */
class NoResponse extends Error {}

/** The responder answered with an HTTP redirect, which `openssl ocsp` does not follow. */
class Redirected extends NoResponse {}

/** openssl ran past its deadline and was stopped. */
class OpensslTimeout extends Error {}

/**
 * The flags that make `openssl ocsp` verify a response as a TLS client does
 * (RFC 6960 4.2.2.2): signed by the certificate's issuer, or by a responder
 * certificate the issuer issued for OCSPSigning. The rootchain (or without
 * one, openssl's default trust store) only anchors the issuer's chain, and
 * the intermediates are untrusted help. The Python bot's `-VAfile rootchain`
 * made every certificate there a trusted responder: a response signed by the
 * root, or by another CA's intermediate in a rollover's rootchain, passed.
 */
function verificationArgs(target: Target, input: RequestInput): string[] {
  return [
    "-no_nonce",
    "-issuer",
    input.issuerFile,
    "-serial",
    input.serial,
    ...(target.rootchainPath ? ["-CAfile", target.rootchainPath] : []),
    "-verify_other",
    target.chainPath ?? target.certPath,
  ];
}

/** One answer (SingleResponse) of an OCSP response, as its DER says it. */
interface SingleAnswer {
  status: CertStatus;
  thisUpdate?: Date;
  nextUpdate?: Date;
  revocationTime?: Date;
}

/** A GeneralizedTime's content, `YYYYMMDDHHMMSS[.f]Z`, as a Date. */
function generalizedTime(bytes: Uint8Array): Date | undefined {
  const match = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(?:\.\d+)?Z$/.exec(decoder.decode(bytes));
  if (!match) return undefined;
  const [year, month, day, hour, minute, second] = match.slice(1).map(Number);
  return new Date(Date.UTC(year, month - 1, day, hour, minute, second));
}

/**
 * What openssl's report leaves out, read from the response's DER: every
 * answer it holds for the certificate with `serial` (content octets), how
 * many it holds for others, and when its signer's certificate ends (the
 * one its ResponderID names among those it carries). undefined when the
 * DER cannot be read.
 */
export function responseContents(
  response: Uint8Array,
  serial: Uint8Array,
): { ours: SingleAnswer[]; others: number; signerNotAfter?: Date } | undefined {
  try {
    const inside = (element: { content: number; end: number }) =>
      derElements(response, element.content, element.end);
    const bytesOf = (element: { content: number; end: number }) =>
      response.subarray(element.content, element.end);
    const [ocspResponse] = derElements(response);
    const responseBytes = inside(ocspResponse).find((element) => element.tag === 0xa0);
    if (!responseBytes) return undefined;
    const [, octets] = inside(inside(responseBytes)[0]);
    const [basic] = inside(octets);
    const [tbs, , , certsField] = inside(basic);
    const data = inside(tbs);
    const at = data[0].tag === 0xa0 ? 1 : 0;
    const [responderId, , answers] = [data[at], data[at + 1], data[at + 2]];
    const ours: SingleAnswer[] = [];
    let others = 0;
    const hex = (bytes: Uint8Array) =>
      Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    const wanted = hex(serial);
    for (const single of inside(answers)) {
      const [certId, status, thisUpdate, ...rest] = inside(single);
      const serialNumber = inside(certId)[3];
      if (hex(bytesOf(serialNumber)) !== wanted) {
        others++;
        continue;
      }
      const next = rest.find((element) => element.tag === 0xa0);
      const answer: SingleAnswer = {
        status: status.tag === 0x80 ? "good" : status.tag === 0xa1 ? "revoked" : "unknown",
        thisUpdate: generalizedTime(bytesOf(thisUpdate)),
      };
      if (next) answer.nextUpdate = generalizedTime(bytesOf(inside(next)[0]));
      if (status.tag === 0xa1) answer.revocationTime = generalizedTime(bytesOf(inside(status)[0]));
      ours.push(answer);
    }
    const certs = certsField?.tag === 0xa0 ? inside(inside(certsField)[0]) : [];
    const named = inside(responderId)[0];
    const signer = certs.map((cert) => response.subarray(cert.start, cert.end)).find((der) => {
      const fields = certificateFields(der);
      return responderId.tag === 0xa2
        ? fields.keyHash === hex(bytesOf(named))
        : hex(fields.subject) === hex(response.subarray(named.start, named.end));
    });
    const signerNotAfter = signer &&
      new Date(new (nodeCrypto().X509Certificate)(signer).validTo);
    return { ours, others, ...(signerNotAfter ? { signerNotAfter } : {}) };
  } catch {
    return undefined;
  }
}

/** The serial of a target's certificate, as its DER holds it. */
function leafSerial(target: Target, context: RunContext): Uint8Array {
  return certificateFields(parsedFiles(target, context).bundle.leaf.x509.raw).serial;
}

/** Verifies a stored response and reads its status and dates. */
async function checkStoredResponse(
  target: Target,
  read: Uint8Array | undefined,
  context: RunContext,
): Promise<ResponseReport> {
  const input = await requestInput(target, context);
  // openssl judges the very bytes that were hashed, from a file only this run can change.
  const bytes = read ??
    readInput(
      target.responsePath,
      "stored response",
      (name) => context.files.read(name, "response", "trusted").bytes,
    );
  const copy = Deno.makeTempFileSync({ prefix: "ocspbot-stored-", suffix: ".der" });
  context.files.temporary.add(copy);
  try {
    Deno.writeFileSync(copy, bytes);
    const result = await runOpenssl(
      ["ocsp", "-respin", copy, ...verificationArgs(target, input)],
      context,
      input.issuerPem,
    );
    const report = parseOcspOutput(result.stdout, result.stderr, result.code);
    return withContents(report, bytes, leafSerial(target, context));
  } finally {
    Deno.removeSync(copy);
    context.files.temporary.delete(copy);
  }
}

/**
 * Fetches, verifies and reads a new response in one openssl process. openssl
 * hands the response over on stdout, ahead of its report, so the bytes kept
 * are exactly those it verified: a file it wrote itself could be cut short
 * by a full disk while it still says "Response verify OK".
 */
async function fetchResponse(
  target: Target,
  responderUrl: string,
  context: RunContext,
): Promise<{ report: ResponseReport; bytes: Uint8Array }> {
  const { config } = context;
  const input = await requestInput(target, context);
  const result = await runOpenssl(
    [
      "ocsp",
      "-url",
      responderUrl,
      // Without -proxy, OpenSSL 3 itself honours http_proxy and no_proxy.
      ...(config.proxy ? ["-proxy", config.proxy] : []),
      // OpenSSL 1.x sent no Host header, and some responders insist on one.
      "-header",
      `Host=${new URL(responderUrl).host}`,
      "-timeout",
      String(Math.ceil(config.timeoutSeconds)),
      "-respout",
      "-",
      ...verificationArgs(target, input),
    ],
    context,
    input.issuerPem,
  );
  const responseLength = derLength(result.output);
  if (responseLength === undefined && /redirection not enabled/.test(result.stderr)) {
    throw new Redirected(`${responderUrl} answered with an HTTP redirect`);
  }
  if (responseLength === undefined) {
    throw new NoResponse(
      `No response from ${responderUrl}: ${
        summarizeOpensslErrors(result.stderr) || `openssl exited with ${result.code}`
      }`,
    );
  }
  const printed = decoder.decode(result.output.subarray(responseLength));
  const bytes = result.output.slice(0, responseLength);
  const report = withContents(
    parseOcspOutput(printed, result.stderr, result.code),
    bytes,
    leafSerial(target, context),
  );
  return { report, bytes };
}

/**
 * Tries every responder URL in order, in up to 1 + retries rounds with a
 * growing pause between rounds, until an answer verifies. When none does,
 * returns the last answer that did not, or throws if no URL answered at all.
 * An answer that says the responder will never serve this request (e.g.
 * `unauthorized`) ends the tries at once.
 */
async function fetchWithRetries(
  target: Target,
  urls: string[],
  context: RunContext,
  log: Logger,
): Promise<{ report: ResponseReport; bytes: Uint8Array; url: string }> {
  const { config, silentResponders } = context;
  const attempts = config.retries + 1;
  let unverified: { report: ResponseReport; bytes: Uint8Array; url: string } | undefined;
  let lastProblem = "";
  const answered = new Set<string>();
  const silent = new Map<string, string>();
  const asked = urls.filter((url) => !silentResponders.has(url));
  if (asked.length === 0) {
    const why = silentResponders.get(urls[0]);
    throw new Error(
      `No usable response from ${
        urls.join(", ")
      }: it gave no answer earlier in this run (${why}); not asked again until the next run`,
    );
  }
  for (let round = 1, settled = false; round <= attempts && !settled; round++) {
    if (round > 1) {
      await pause(Math.min(2 ** (round - 2), config.timeoutSeconds) * 1000, context.stop);
    }
    const queue = [...asked];
    for (let hops = 0, url; (url = queue.shift()) !== undefined;) {
      try {
        const answer = { ...await fetchResponse(target, normalizedUrl(url), context), url };
        answered.add(url);
        const { report } = answer;
        if (report.verified && report.status) return answer;
        if (report.responderError && DEFINITIVE_ERROR_STATUSES.includes(report.responderError)) {
          return answer;
        }
        unverified = answer;
        lastProblem = report.responderError
          ? report.problem!
          : `answer does not verify: ${report.problem}`;
        // Asking again cannot change what the local files say of the signer's chain.
        if (!report.responderError && unanchored(report)) settled = true;
      } catch (error) {
        if (error instanceof Redirected) {
          answered.add(url);
          const next = await redirectTarget(url, target, context);
          if (next.url && hops++ < MAX_REDIRECTS) {
            log.info(
              `Responder ${url} redirects to ${next.url}; following it (an "ocsp_responder_uri" of ${next.url} saves the hop)`,
            );
            queue.unshift(next.url);
            continue;
          }
          lastProblem = `${errorText(error)}; ${
            next.why ?? `more than ${MAX_REDIRECTS} redirects`
          }`;
        } else if (error instanceof NoResponse || error instanceof OpensslTimeout) {
          lastProblem = errorText(error);
          silent.set(url, lastProblem);
        } else throw error;
      }
      log.warn(`Attempt ${round} of ${attempts} at ${url} failed: ${lastProblem}`);
    }
  }
  for (const [url, why] of silent) if (!answered.has(url)) silentResponders.set(url, why);
  if (unverified) return unverified;
  throw new Error(
    `No usable response from ${urls.join(", ")} after ${attempts} attempts: ${lastProblem}`,
  );
}

/**
 * Whether an answer failed verification because the signer's chain does not
 * reach the rootchain (or the trust store): a fact of the local files, which
 * another attempt cannot change.
 */
function unanchored(report: ResponseReport): boolean {
  return /unable to get (?:local )?issuer certificate|self[- ]signed certificate in certificate chain/
    .test(report.problem ?? "");
}

/**
 * A responder URL as openssl takes it: a scheme in capitals (`HTTP://`,
 * which URLs allow) lower-cased. A URL that cannot be used is a failed
 * attempt (NoResponse), so that the next URL is tried.
 */
function normalizedUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new NoResponse(`"${url}" is not a usable URL`);
  }
  if (!/^https?:$/.test(parsed.protocol) || !parsed.host) {
    throw new NoResponse(`"${url}" is not an http:// or https:// URL`);
  }
  return parsed.href;
}

/**
 * Where a redirecting responder points. openssl shows no Location, so the
 * request is posted once more by Deno itself, which may reach the network
 * only when ocspbot was given --allow-net (for that host); otherwise what to
 * do is said instead.
 */
async function redirectTarget(
  url: string,
  target: Target,
  context: RunContext,
): Promise<{ url?: string; why?: string }> {
  const { host } = new URL(normalizedUrl(url));
  if (Deno.permissions.querySync({ name: "net", host }).state !== "granted") {
    return {
      why: `openssl does not follow redirects; run ocspbot with --allow-net=${
        new URL(normalizedUrl(url)).hostname
      } (and the hosts it points to) to let it follow them, or set "ocsp_responder_uri" to where it points (curl -si -X POST ${url} shows the Location)`,
    };
  }
  const input = await requestInput(target, context);
  const { output: request } = await runOpenssl(
    ["ocsp", "-issuer", input.issuerFile, "-serial", input.serial, "-no_nonce", "-reqout", "-"],
    context,
    input.issuerPem,
  );
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), context.config.timeoutSeconds * 1000);
  try {
    const response = await fetch(normalizedUrl(url), {
      method: "POST",
      headers: { "content-type": "application/ocsp-request" },
      body: request.slice(),
      redirect: "manual",
      signal: abort.signal,
    });
    await response.body?.cancel();
    const location = response.headers.get("location");
    if (!location) return { why: `it answered HTTP ${response.status} without a Location` };
    const next = new URL(location, normalizedUrl(url));
    if (!/^https?:$/.test(next.protocol)) {
      return { why: `it points to "${next.href}", not an http(s) URL` };
    }
    return { url: next.href };
  } catch (error) {
    return { why: `asking where it points failed: ${errorText(error)}` };
  } finally {
    clearTimeout(timer);
  }
}

// ------------------------------------------------------------------ write --
// The one door for every file root touches (Files), and what goes through
// it: backups, the rejected answer kept for inspection, the lock.

/**
 * The most ocspbot reads of each kind of file, far above any real one: a
 * certificate bundle or a response is a few KiB, the state of 100,000
 * certificates about 20 MiB. Another user's sparse 2 GiB "certificate" or a
 * link to /dev/zero then costs an error, not the machine's memory.
 */
const SIZE_CAPS = {
  certificate: 1 << 20,
  response: 1 << 20,
  state: 256 << 20,
  config: 64 << 20,
  include: 4 << 20,
  metrics: 16 << 20,
  "HAProxy answer": 1 << 20,
} as const;

type FileKind = keyof typeof SIZE_CAPS;

/** The modes ocspbot gives what it makes, whatever the umask. */
const MODES = { folder: 0o755, file: 0o644, private: 0o600 } as const;

/**
 * node:fs, for what Deno's own file API lacks: O_NOFOLLOW, O_NONBLOCK,
 * O_DIRECTORY, and changing owner and mode through an open file rather than
 * by a name someone could swap. Loaded on first use, as node:crypto.
 */
function nodeFs(): typeof import("node:fs") {
  return process.getBuiltinModule("node:fs");
}

/** The errno name of a node:fs error ("ENOENT"), or undefined. */
function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" ? code : undefined;
}

function untrustedLinkText(link: string, info: { uid: number | null }): string {
  return `"${link}" is a link owned by uid ${info.uid}, which another user could have planted; ocspbot follows only links of root and of the user it runs as`;
}

/**
 * The target of a link judged trusted, read so that a link swapped in
 * between (a new inode) is not followed instead.
 */
function readTrustedLink(
  link: string,
  info: { ino: number | null; dev: number },
  shown: string,
): string {
  const target = Deno.readLinkSync(link);
  const again = Deno.lstatSync(link);
  if (!again.isSymlink || again.ino !== info.ino || again.dev !== info.dev) {
    throw new Error(`"${shown}" changed while it was being read; try again`);
  }
  return target;
}

/** Eight random bytes in hex: a temporary file's name nobody can guess ahead. */
function randomSuffix(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(8)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** What stat says of a file ocspbot opened, as the door hands it on. */
type OpenedInfo = import("node:fs").Stats;

/** What the door found at a name: a file it opened, a link, or anything else. */
type Opened =
  | { fd: number; info: OpenedInfo }
  | { link: Deno.FileInfo }
  | { special: Deno.FileInfo };

/** A file read through the door: its bytes, and what fstat said of what was read. */
interface ReadFile {
  bytes: Uint8Array;
  info: OpenedInfo;
  /**
   * Root or ocspbot's own user owns it and nobody else may write it: what it
   * says may be believed (the state) and quoted.
   */
  ours: boolean;
}

/**
 * Gives the new file the owner and group of the file it replaces, as far as
 * this user may, and its read and write bits, never set-id, sticky or
 * world-write bits: a planted `6777` file must not make the staple
 * world-writable or setuid. Returns a warning naming what could not be kept,
 * since a server that cannot read its staple fails silently.
 */
function keepAttributes(fd: number, old: OpenedInfo, file: string): string | undefined {
  const fs = nodeFs();
  const lost: string[] = [];
  const fresh = fs.fstatSync(fd);
  if (old.uid !== fresh.uid || old.gid !== fresh.gid) {
    try {
      fs.fchownSync(fd, old.uid, old.gid);
    } catch {
      // Only root may give a file away, but a member of its group may keep the group.
      if (old.uid !== fresh.uid) lost.push(`owner (uid ${old.uid})`);
      try {
        if (old.gid !== fresh.gid) fs.fchownSync(fd, fresh.uid, old.gid);
      } catch {
        lost.push(`group (gid ${old.gid})`);
      }
    }
  }
  fs.fchmodSync(fd, old.mode & 0o664);
  if (lost.length === 0) return undefined;
  const kept = fs.fstatSync(fd);
  return `Cannot keep the ${
    lost.join(" and ")
  } of "${file}": the new file has uid ${kept.uid}, gid ${kept.gid}; run ocspbot as the file's owner, or as a member of its group`;
}

/**
 * The one door to every file and folder a run writes, and to every file it
 * reads whole. Deno has no openat(2), and opening /proc/self/fd/N/… needs
 * --allow-all, so the door walks to the folder instead: it moves the
 * process's working directory there from `/`, one name at a time, each
 * checked by lstat before and by stat of "." after (same device and inode);
 * names are then used relative to it, and the working directory moved back
 * before anything else runs (every step in the folder is synchronous). Deno
 * still opens a relative name by the working directory's path, so no check
 * closes the moment before an open: a folder whose parent another user may
 * change is refused outright (#enter), and the folder a file lies in may be
 * theirs only because each name in it is judged on its own. Files are
 * opened without following a last
 * link that another user owns, without blocking (a FIFO or a device cannot
 * hang the run), checked by fstat to be what is meant, and read up to their
 * kind's SIZE_CAPS. Links of root or of the user ocspbot runs as are
 * followed, as Linux's fs.protected_symlinks does in shared folders. Each
 * folder it lists is listed once per run: whether a response exists yet is
 * a lookup, not a failed stat, which costs an exception apiece on a first
 * run.
 */
class Files {
  /** @param home the folder the run works in, where every walk returns. */
  constructor(private readonly home: string) {}

  #folders = new Map<string, Map<string, Deno.DirEntry>>();
  /**
   * Temporary files outside the door (openssl's inputs, in a private
   * temporary file), so that a run ended by a signal can remove them.
   */
  readonly temporary = new Set<string>();
  #uid: number | null | undefined;

  #listing(folder: string): Map<string, Deno.DirEntry> {
    let entries = this.#folders.get(folder);
    if (!entries) {
      const listed = new Map<string, Deno.DirEntry>();
      try {
        this.#within(folder, false, () => {
          for (const entry of Deno.readDirSync(".")) listed.set(entry.name, entry);
        });
      } catch (error) {
        throw new Error(`Cannot list folder "${folder}": ${errorText(error)}`);
      }
      // A folder not made yet holds nothing; it is made when written to.
      entries = listed;
      this.#folders.set(folder, entries);
    }
    return entries;
  }

  /** What is at `file`, a dangling link included; undefined when nothing is. */
  entry(file: string): Deno.DirEntry | undefined {
    return this.#listing(path.dirname(file)).get(path.basename(file));
  }

  /** The names in a folder. */
  names(folder: string): IterableIterator<string> {
    return this.#listing(folder).keys();
  }

  /** The last few files stat'ed: one chain or rootchain file often serves every certificate. */
  #stats: { file: string; info: Deno.FileInfo }[] = [];

  /**
   * What stat says of a certificate's input file; the error names what it
   * is. A file named again in a row is stat'ed once a run. What the stat says
   * only decides whether to read: the read goes through the door.
   */
  stat(file: string, what: string): Deno.FileInfo {
    const known = this.#stats.find((entry) => entry.file === file);
    if (known) return known.info;
    const info = readInput(file, what, Deno.statSync);
    this.#stats.unshift({ file, info });
    if (this.#stats.length > 4) this.#stats.pop();
    return info;
  }

  #added(file: string): void {
    const name = path.basename(file);
    this.#listing(path.dirname(file)).set(name, {
      name,
      isFile: true,
      isDirectory: false,
      isSymlink: false,
    });
  }

  /** Removes a file (a link, a FIFO: anything but a folder), if the listing has it. */
  remove(file: string): void {
    if (!this.entry(file)) return;
    this.#within(path.dirname(path.resolve(file)), false, () => {
      try {
        nodeFs().unlinkSync(path.basename(file));
      } catch (error) {
        if (errorCode(error) !== "ENOENT") throw error;
      }
    });
    this.#listing(path.dirname(file)).delete(path.basename(file));
  }

  /**
   * When a regular file was last written; undefined for a link, a folder or
   * anything else, or nothing.
   */
  writtenAt(file: string): number | undefined {
    return this.#within(path.dirname(path.resolve(file)), false, () => {
      try {
        const info = Deno.lstatSync(path.basename(file));
        return info.isFile ? info.mtime?.getTime() ?? 0 : undefined;
      } catch {
        return undefined;
      }
    });
  }

  /**
   * Whether a link may be followed: root or the user ocspbot runs as made it.
   * Anybody else who may write into its folder could have planted it to make
   * ocspbot, often root, read or overwrite a file of their choosing.
   */
  trusts(owner: { uid: number | null }): boolean {
    return owner.uid === 0 || (owner.uid !== null && owner.uid === this.#runningUid());
  }

  /**
   * Whether a user other than root and ocspbot's may change what is in
   * `folder` (it is theirs, or group- or world-writable without the sticky
   * bit), and who; undefined when only trusted users may, or it is missing.
   */
  folderOthersMayWrite(folder: string): { path: string; who: string } | undefined {
    try {
      const who = this.#othersMayChange(Deno.statSync(folder));
      return who ? { path: folder, who } : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Who other than root and ocspbot's user may rename or replace entries of
   * the folder `info` describes: its owner, or the group or everybody it
   * lets write. With the sticky bit (/tmp), only an entry's owner may, so an
   * `entry` of a trusted user's is safe there.
   */
  #othersMayChange(
    info: Deno.FileInfo,
    entry?: { uid: number | null },
  ): string | undefined {
    const mode = info.mode ?? 0;
    if (!this.trusts(info)) return `uid ${info.uid}, its owner`;
    if (mode & 0o1000 && (!entry || this.trusts(entry))) return undefined;
    if (mode & 0o002) return "everybody";
    if (mode & 0o020 && info.gid !== 0) return `group ${info.gid}`;
    return undefined;
  }

  /** Owned by root or ocspbot's user, and writable by nobody else. */
  #ours(info: OpenedInfo): boolean {
    return this.trusts(info) && (info.mode & 0o022) === 0;
  }

  /**
   * The uid ocspbot runs as, asked of `id` once, and only when a link that is
   * not root's needs judging: Deno tells a script its uid only with
   * --allow-sys. null when `id` cannot say, and then only root's links count.
   */
  #runningUid(): number | null {
    if (this.#uid === undefined) {
      try {
        const output = new Deno.Command("id", { args: ["-u"], stdin: "null", stderr: "null" })
          .outputSync();
        const uid = Number(decoder.decode(output.stdout).trim());
        this.#uid = output.success && Number.isInteger(uid) ? uid : null;
      } catch {
        this.#uid = null;
      }
    }
    return this.#uid;
  }

  /**
   * Runs `act` (synchronous: nothing else may run meanwhile) with the
   * working directory in `folder`, entered by #enter(), and moves it back.
   * `act` gets the folder's path as walked, every link resolved. Without
   * `create`, a missing folder is undefined and `act` is not run.
   */
  #within<T>(folder: string, create: boolean, act: (walked: string) => T): T | undefined {
    try {
      const walked = this.#enter(folder, create);
      return walked === undefined ? undefined : act(walked);
    } finally {
      Deno.chdir(this.home);
    }
  }

  /**
   * Moves the working directory into `folder` from `/`, one name at a time:
   * lstat says what a name is, chdir enters it, and stat of "." must then
   * be that very folder; a folder swapped for a link in between is caught,
   * never entered unseen. Links of root or of ocspbot's user are followed,
   * another user's link stops the walk. With `create`, missing folders are
   * made one at a time, mode 0755 whatever the umask. Returns the path as
   * walked, or undefined when a folder is missing and not to be made.
   */
  #enter(folder: string, create: boolean): string | undefined {
    const parts = path.resolve(folder).split("/").filter(Boolean);
    const same = (a: Deno.FileInfo, b: Deno.FileInfo) => a.dev === b.dev && a.ino === b.ino;
    Deno.chdir("/");
    let trail = [Deno.statSync(".")];
    let walked = "/";
    for (let hops = 0, made = false; parts.length > 0;) {
      const part = parts.shift()!;
      if (part === ".") continue;
      if (part === "..") {
        if (trail.length === 1) continue;
        Deno.chdir("..");
        trail.pop();
        if (!same(Deno.statSync("."), trail.at(-1)!)) {
          throw new Error(`"${walked}" was moved while it was being opened; try again`);
        }
        walked = path.dirname(walked);
        continue;
      }
      const next = path.join(walked, part);
      let info: Deno.FileInfo;
      try {
        info = Deno.lstatSync(part);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
        if (!create) return undefined;
        if (made) throw error;
        try {
          Deno.mkdirSync(part, { mode: MODES.folder });
        } catch (error) {
          if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
        }
        parts.unshift(part);
        made = true;
        continue;
      }
      if (info.isSymlink) {
        if (!this.trusts(info)) throw new Error(untrustedLinkText(next, info));
        if (++hops > 40) throw new Error(`"${folder}" is a loop of symbolic links`);
        const target = readTrustedLink(part, info, next);
        parts.unshift(...target.split("/").filter(Boolean));
        if (target.startsWith("/")) {
          Deno.chdir("/");
          trail = [trail[0]];
          walked = "/";
        }
        made = false;
        continue;
      }
      if (!info.isDirectory) {
        throw new Error(`"${next}" is ${info.isFile ? "a file, " : ""}not a folder`);
      }
      // Deno opens by path, never by the folder it stands in: a folder whose
      // parent another user may change could be swapped for a link between
      // any check and the open. Such a parent is refused, as logrotate does.
      const parent = trail.at(-1)!;
      const who = this.#othersMayChange(parent, info);
      if (who) {
        throw new Error(
          `"${walked}" may be changed by ${who}, who could swap "${next}" for a link while ocspbot works in it; make "${walked}" writable by root alone, or use a folder elsewhere`,
        );
      }
      Deno.chdir(part);
      const entered = Deno.statSync(".");
      if (!same(entered, info)) {
        throw new Error(`"${next}" was swapped while it was being opened; nothing was done there`);
      }
      // Made here, by this walk: its mode is ours to set, through ".", not by a name.
      if (made) Deno.chmodSync(".", MODES.folder);
      made = false;
      trail.push(entered);
      walked = next;
    }
    return walked;
  }

  /**
   * Opens `name` in the working directory: a regular file, never a link, a
   * FIFO, a device or a folder (those are returned as what lstat says, for
   * the caller to judge). Unless run with --allow-all, Deno resolves links
   * itself before it opens, so O_NOFOLLOW alone proves nothing: lstat looks
   * first, and the descriptor must then be that very file, or the one just
   * made (with O_CREAT, always O_EXCL: a name that exists is EEXIST).
   */
  #openName(name: string, flags: number, mode?: number): Opened {
    const fs = nodeFs();
    const { O_NOFOLLOW, O_NONBLOCK, O_CREAT } = fs.constants;
    let seen: Deno.FileInfo | undefined;
    try {
      seen = Deno.lstatSync(name);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    const fail = (code: string, message: string) => Object.assign(new Error(message), { code });
    if (seen?.isSymlink) return { link: seen };
    if (seen && (flags & O_CREAT)) throw fail("EEXIST", `"${name}" exists`);
    if (seen && !seen.isFile) return { special: seen };
    if (!seen && !(flags & O_CREAT)) throw fail("ENOENT", `"${name}" does not exist`);
    const fd = fs.openSync(name, flags | O_NOFOLLOW | O_NONBLOCK, mode);
    try {
      const info = fs.fstatSync(fd);
      const now = Deno.lstatSync(name);
      const expected = seen ?? now;
      if (
        !info.isFile() || now.isSymlink || info.dev !== expected.dev || info.ino !== expected.ino
      ) {
        throw fail("ECHANGED", `"${name}" changed while it was being opened`);
      }
      return { fd, info };
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  /**
   * Reads a whole file through the door: a regular file only, at most its
   * kind's SIZE_CAPS. `links`: "any" follows every link (a certificate in an
   * ACME client's folder, which nothing is written through); "trusted"
   * refuses another user's link, which could lead root to any file. A
   * missing file throws Deno.errors.NotFound.
   */
  read(file: string, kind: FileKind, links: "any" | "trusted"): ReadFile {
    const fs = nodeFs();
    if (links === "any") return this.#readAny(file, kind);
    let wanted = path.resolve(file);
    // Said before the walk: Deno will not let a walk enter /dev, /proc or /sys at all.
    if (!Deno.statSync(wanted).isFile) throw new Error(`"${file}" is not a regular file`);
    let othersLink = false;
    for (let hops = 0;; hops++) {
      const name = path.basename(wanted);
      const step = this.#within(path.dirname(wanted), false, (walked) => {
        const shown = path.join(walked, name);
        let opened;
        try {
          opened = this.#openName(name, fs.constants.O_RDONLY);
        } catch (error) {
          if (errorCode(error) === "ENOENT") return undefined;
          throw error;
        }
        if ("link" in opened) {
          if (!this.trusts(opened.link)) {
            if (links === "trusted") throw new Error(untrustedLinkText(shown, opened.link));
            othersLink = true;
          }
          if (hops >= 40) throw new Error(`"${file}" is a loop of symbolic links`);
          return path.resolve(walked, readTrustedLink(name, opened.link, shown));
        }
        if ("special" in opened) {
          // A FIFO would hang the read, a device never end it: neither is opened.
          throw new Error(`"${shown}" is not a regular file`);
        }
        try {
          const info = opened.info;
          const bytes = readCapped(opened.fd, info.size, kind, shown);
          // A second name (a hard link) or another user's link could be of anyone's file.
          const ours = this.#ours(info) && info.nlink === 1 && !othersLink;
          return { bytes, info, ours };
        } finally {
          fs.closeSync(opened.fd);
        }
      });
      if (step === undefined) throw new Deno.errors.NotFound("No such file or directory");
      if (typeof step !== "string") return step;
      wanted = step;
    }
  }

  /**
   * read() where any link may be followed: nothing is gained by walking
   * the folders, since a link may lead anywhere anyway, so the name is
   * opened as it is, without blocking, and only a regular file is read.
   * Deno itself refuses to open devices other than /dev/null and the like.
   */
  #readAny(file: string, kind: FileKind): ReadFile {
    const fs = nodeFs();
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    } catch (error) {
      if (errorCode(error) === "ENOENT") {
        throw new Deno.errors.NotFound("No such file or directory");
      }
      throw error;
    }
    try {
      const info = fs.fstatSync(fd);
      if (!info.isFile()) throw new Error(`"${file}" is not a regular file`);
      const bytes = readCapped(fd, info.size, kind, file);
      return { bytes, info, ours: false };
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Replaces `file` with `bytes` by one rename, so a reader sees the old file
   * or the new one whole, never none or part of one. The bytes go to a hidden
   * temporary file beside it (HAProxy's `crt <dir>` skips names starting with
   * a dot) with a name nobody can guess, created only if no such name exists,
   * so a link planted there is never followed; they are synced to disk,
   * checked by size, and take the old file's owner, group and read/write
   * bits (a new file, or one that was also another file's name, gets 0644);
   * `privateMode` gives the file 0600 whatever was there (the state). A
   * trusted link at the name is followed, so that "symlinks stay links" (a
   * server pointed at a shared file); another user's link, a FIFO, a socket
   * or a device there is replaced, not followed or opened; a folder there
   * fails this write alone. Throws naming
   * the folder and the cause, with the temporary file removed; returns
   * warnings: an owner or group that could not be kept, what was replaced.
   */
  write(file: string, bytes: Uint8Array, privateMode = false): Promise<string[]> {
    const fs = nodeFs();
    const warnings: string[] = [];
    let wanted = path.resolve(file);
    for (let hops = 0;; hops++) {
      const name = path.basename(wanted);
      let walkedFolder = path.dirname(wanted);
      try {
        const followed = this.#within(path.dirname(wanted), true, (walked) => {
          walkedFolder = walked;
          const shown = path.join(walked, name);
          let existing: OpenedInfo | undefined;
          let replaced: string | undefined;
          try {
            // One lstat decides and gives the attributes: a second could see a swapped name.
            const info = fs.lstatSync(name);
            if (info.isDirectory()) throw new Error(`"${shown}" is a folder, not a file`);
            if (info.isSymbolicLink() && this.trusts(info)) {
              if (hops >= 40) throw new Error(`"${file}" is a loop of symbolic links`);
              return path.resolve(walked, readTrustedLink(name, info, shown));
            }
            if (info.isSymbolicLink()) replaced = untrustedLinkText(shown, info);
            else if (!info.isFile()) {
              replaced =
                `"${shown}" is not a regular file (a FIFO, socket or device), owned by uid ${info.uid}`;
            } else if (info.nlink > 1) {
              // A hard link: its attributes are another file's (a setuid program's, say).
              replaced = `"${shown}" has ${info.nlink} hard links, so it is also another file`;
            } else existing = info;
          } catch (error) {
            if (errorCode(error) !== "ENOENT") throw error;
          }
          const mode = privateMode ? MODES.private : existing ? undefined : MODES.file;
          this.#replace(name, bytes, mode, existing, file, warnings);
          if (replaced) warnings.push(`${replaced}: replaced by the file itself`);
          return undefined;
        });
        if (followed === undefined) break;
        wanted = followed;
      } catch (error) {
        throw new Error(
          `Cannot write "${name}" in folder "${walkedFolder}": ${errorText(error)}`,
        );
      }
    }
    this.#added(file);
    return Promise.resolve(warnings);
  }

  /**
   * The temporary file, its sync, its attributes and the rename of write(),
   * in the working directory; the temporary file never outlives a failure.
   */
  #replace(
    name: string,
    bytes: Uint8Array,
    mode: number | undefined,
    existing: OpenedInfo | undefined,
    file: string,
    warnings: string[],
  ): void {
    const fs = nodeFs();
    const temporary = `.${name}.${randomSuffix()}.tmp`;
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    const fd = fs.openSync(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, MODES.private);
    try {
      try {
        writeAll({ writeSync: (chunk) => fs.writeSync(fd, chunk) }, bytes);
        fs.fsyncSync(fd);
        const written = fs.fstatSync(fd).size;
        if (written !== bytes.length) {
          throw new Error(`${written} of ${bytes.length} bytes written`);
        }
        const lost = existing ? keepAttributes(fd, existing, file) : undefined;
        if (mode !== undefined) fs.fchmodSync(fd, mode);
        if (lost) warnings.push(lost);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(temporary, name);
    } catch (error) {
      try {
        fs.unlinkSync(temporary);
      } catch {
        // Renamed already, or never made.
      }
      throw error;
    }
  }

  /**
   * Opens a file that ocspbot keeps for itself (a log, the lock), through
   * the door: another user's link, a FIFO, socket or device, or a second
   * name (hard link) of another file found there is removed and a file of
   * its own made in its place, with `mode`, so root never appends to, locks
   * or changes what somebody else chose. `exclusive`: a file owned by
   * another user is replaced too (a lock others can open, they can hold).
   * `flags` are O_WRONLY|O_APPEND for a log, O_RDONLY for a lock. Returns
   * the descriptor, its stat, and the warnings to say.
   */
  #openOwn(
    file: string,
    what: string,
    flags: number,
    mode: number,
    exclusive: boolean,
  ): { fd: number; info: OpenedInfo; warnings: string[] } {
    const fs = nodeFs();
    const { O_CREAT, O_EXCL } = fs.constants;
    const warnings: string[] = [];
    let wanted = path.resolve(file);
    for (let tries = 0;; tries++) {
      if (tries > 40) throw new Error(`"${file}" keeps changing while it is opened`);
      const name = path.basename(wanted);
      const step = this.#within(path.dirname(wanted), true, (walked) => {
        const shown = path.join(walked, name);
        const replace = (problem: string) => {
          fs.unlinkSync(name);
          warnings.push(`${what} "${shown}" ${problem}: removed, and a file made in its place`);
        };
        let opened: Opened;
        try {
          opened = this.#openName(name, flags | O_CREAT | O_EXCL, mode);
          if ("fd" in opened) fs.fchmodSync(opened.fd, mode);
        } catch (error) {
          if (errorCode(error) === "ECHANGED") return "again";
          if (errorCode(error) !== "EEXIST") throw error;
          try {
            opened = this.#openName(name, flags);
          } catch (error) {
            if (errorCode(error) === "ECHANGED" || errorCode(error) === "ENOENT") return "again";
            // A 0600 lock a run as another user left: this run could never take it.
            if (errorCode(error) !== "EACCES" || !exclusive) throw error;
            replace(
              `is uid ${
                Deno.lstatSync(name).uid
              }'s and cannot be opened by this user (run ocspbot as one user)`,
            );
            return "again";
          }
        }
        if ("special" in opened) {
          if (opened.special.isDirectory) {
            if (!exclusive) throw new Error(`"${shown}" is a folder, not a file`);
            // Another user's folder at the lock would stop every run: it is moved aside.
            const aside = `.${name}.${randomSuffix()}.planted`;
            fs.renameSync(name, aside);
            warnings.push(
              `${what} "${shown}" is a folder (uid ${opened.special.uid}): moved aside as "${
                path.join(walked, aside)
              }", and a file made in its place`,
            );
            return "again";
          }
          replace("is not a regular file (a FIFO, socket or device)");
          return "again";
        }
        if ("link" in opened) {
          if (this.trusts(opened.link)) {
            wanted = path.resolve(walked, readTrustedLink(name, opened.link, shown));
          } else {
            fs.unlinkSync(name);
            warnings.push(
              `${what} ${
                untrustedLinkText(shown, opened.link)
              }: removed, and a file made in its place`,
            );
          }
          return "again";
        }
        const info = opened.info;
        const problem = info.nlink > 1
          ? `has ${info.nlink} hard links, so it is also another file`
          : exclusive && !this.trusts(info)
          ? `is owned by uid ${info.uid}`
          : undefined;
        if (problem) {
          fs.closeSync(opened.fd);
          replace(problem);
          return "again";
        }
        if (exclusive && (info.mode & 0o7777) !== mode) fs.fchmodSync(opened.fd, mode);
        return { fd: opened.fd, info };
      })!;
      if (step !== "again") return { ...step, warnings };
    }
  }

  /**
   * Opens a log to append to, through openOwn(): never another user's link,
   * FIFO or hard link, never by a path that can change under the open.
   */
  openLog(file: string, key: string, warnings: string[]): Destination {
    const fs = nodeFs();
    const { O_WRONLY, O_APPEND } = fs.constants;
    const opened = this.#openOwn(file, key, O_WRONLY | O_APPEND, MODES.file, false);
    warnings.push(...opened.warnings);
    return new Destination(
      `${key} "${file}"`,
      { writeSync: (bytes) => fs.writeSync(opened.fd, bytes) },
      () => fs.closeSync(opened.fd),
    );
  }

  /**
   * Opens the lock file, mode 0600: a user who can open it can flock it and
   * hold every run off; flock needs only read access. Deno locks only its
   * own FsFile, which it opens by name: the file the door opened and checked
   * is opened again by its path as walked, off the event loop (a FIFO
   * swapped in between could block that open, never the run's signals), and
   * must be the same file.
   */
  async openLock(file: string, warnings: string[]): Promise<Deno.FsFile> {
    const fs = nodeFs();
    for (let tries = 0;; tries++) {
      const opened = this.#openOwn(
        file,
        "The lock file",
        fs.constants.O_RDONLY,
        MODES.private,
        true,
      );
      warnings.push(...opened.warnings.splice(0));
      let handle: Deno.FsFile | undefined;
      try {
        const walked = this.#within(path.dirname(path.resolve(file)), false, (w) => w)!;
        const open = Deno.open(path.join(walked, path.basename(file)), { read: true });
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("it did not open within 5 s")), 5000);
        });
        try {
          handle = await Promise.race([open, late]);
        } finally {
          clearTimeout(timer);
        }
        const info = handle.statSync();
        if (info.dev === opened.info.dev && info.ino === opened.info.ino) return handle;
        handle.close();
      } finally {
        fs.closeSync(opened.fd);
      }
      if (tries >= 3) throw new Error(`"${file}" keeps changing while it is opened`);
    }
  }
}

/** Reads an open regular file whole, refusing more than its kind's cap (it may still grow). */
function readCapped(fd: number, size: number, kind: FileKind, shown: string): Uint8Array {
  const cap = SIZE_CAPS[kind];
  const tooLarge = () =>
    new Error(
      `"${shown}" is larger than ${
        formatBytes(cap)
      }, more than any real ${kind} file; ocspbot does not read it`,
    );
  if (size > cap) throw tooLarge();
  const fs = nodeFs();
  let buffer = new Uint8Array(Math.max(size, 4096) + 1);
  let length = 0;
  for (;;) {
    if (length === buffer.length) {
      if (length > cap) throw tooLarge();
      const grown = new Uint8Array(Math.min(buffer.length * 2, cap + 1));
      grown.set(buffer);
      buffer = grown;
    }
    const read = fs.readSync(fd, buffer, length, buffer.length - length, null);
    if (read === 0) break;
    length += read;
    if (length > cap) throw tooLarge();
  }
  return buffer.subarray(0, length);
}

/** A size as a person reads it: "1 MiB", "256 MiB". */
function formatBytes(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes / (1 << 20)} MiB` : `${bytes} bytes`;
}

/** `R-YYYYMMDD-HHMMSS` in local time, the Python bot's backup name. */
function backupName(responsePath: string, now: Date, timeZone?: string): string {
  return responsePath +
    formatLogName("-{year}{month}{day}-{hour}{minute}{second}", now, timeZone);
}

/** Where a response's backups go: beside it, or mirrored under `backup_folder`. */
function backupStem(config: Config, responsePath: string): string {
  if (!config.backupFolder) return responsePath;
  const inside = isInside(responsePath, config.ocspFolder);
  return path.resolve(
    config.backupFolder,
    inside
      ? path.relative(path.resolve(config.ocspFolder), responsePath)
      : path.basename(responsePath),
  );
}

/** Writes the new response's backup without overwriting an earlier one. */
async function makeBackup(
  stem: string,
  response: Uint8Array,
  now: Date,
  log: Logger,
  files: Files,
  timeZone?: string,
): Promise<string> {
  const base = backupName(stem, now, timeZone);
  for (let n = 1;; n++) {
    const name = n === 1 ? base : `${base}.${n}`;
    if (files.entry(name)) continue;
    for (const warning of await files.write(name, response)) log.warn(warning);
    return name;
  }
}

/** Deletes all but the `keep` newest backups of a response; returns their names. */
function pruneBackups(stem: string, keep: number, files: Files): string[] {
  const dir = path.dirname(stem);
  const name = escapeRegExp(path.basename(stem));
  const pattern = new RegExp(`^${name}-\\d{8}-\\d{6}(\\.\\d+)?$`);
  const backups = [...files.names(dir)]
    .filter((entry) => pattern.test(entry))
    .map((entry) => {
      const file = path.join(dir, entry);
      // A link or a folder of that name is nobody's backup: counted and removed never.
      return { file, time: files.writtenAt(file) };
    })
    .filter((backup): backup is { file: string; time: number } => backup.time !== undefined)
    // Newest first by time written: the names are local time, which can repeat an hour.
    .sort((a, b) => b.time - a.time || b.file.localeCompare(a.file));
  const removed = backups.slice(keep).map((backup) => backup.file);
  for (const file of removed) files.remove(file);
  return removed;
}

/**
 * Where an answer that failed its checks is kept for inspection: hidden
 * beside the response, so that a server loading the folder skips it.
 */
export function rejectedPath(responsePath: string): string {
  return path.join(path.dirname(responsePath), `.${path.basename(responsePath)}.rejected`);
}

/**
 * Takes the run's lock: an OS file lock, which the kernel releases however
 * the process ends. Waits up to `waitSeconds` for another run to finish. An
 * existing lock file needs only to be readable: one left by a root run must
 * not lock out a later run as another user.
 */
async function acquireLock(
  file: string,
  waitSeconds: number,
  warnings: string[],
  files: Files,
  stop: AbortSignal,
): Promise<Deno.FsFile> {
  let handle: Deno.FsFile;
  try {
    handle = await files.openLock(file, warnings);
  } catch (error) {
    throw new ExitError(
      `Cannot open the lock file "${file}": ${
        errorText(error)
      }; the folder must exist as a folder this user may write to (or set "state_file" elsewhere)`,
      EXIT.failure,
    );
  }
  const deadline = performance.now() + waitSeconds * 1000;
  try {
    while (!(await handle.tryLock(true))) {
      if (performance.now() >= deadline) {
        throw new ExitError(
          `Another ocspbot run holds the lock "${file}"; gave up after ${waitSeconds} s (config key "lock_timeout")`,
          EXIT.failure,
        );
      }
      await pause(Math.min(250, Math.max(deadline - performance.now(), 0)), stop);
    }
  } catch (error) {
    handle.close();
    throw error;
  }
  return handle;
}

// ----------------------------------------------------------------- report --
// What became of each certificate, said once and rendered many ways: the
// log, --check's Nagios line, --json (REPORTERS) and the Prometheus metrics.

/** What a run did with a certificate; "interrupted" when a signal stopped it. */
type Action = "renewed" | "unchanged" | "skipped" | "failed" | "interrupted";

/**
 * How a certificate's staple stands, for --check: fresh is OK; due (not
 * tried yet) and failing (tried, and the responder failed) are WARNING;
 * critical is CRITICAL.
 */
export type Health = "fresh" | "due" | "failing" | "critical";

/** What happened to one target, and the response it is left with. */
export interface Outcome {
  id: string;
  action: Action;
  certPath: string;
  responsePath: string;
  responderUrl?: string;
  mustStaple?: boolean;
  status?: CertStatus;
  thisUpdate?: Date;
  nextUpdate?: Date;
  /** When the stored response stops being usable (judgeTimes(): every end counted). */
  endsAt?: Date;
  renewAt?: Date;
  health?: Health;
  /** The last request to a responder, as the state remembers it after this run. */
  attempt?: Attempt;
  /** Why it was skipped: it names no OCSP responder, or it has expired. */
  skipReason?: SkipReason;
  /** --check with `serve`: what the server staples, compared with what is stored. */
  served?: Served;
  error?: string;
}

/** Counts of a run; `notProcessed` counts what stop_on_error left out. */
interface Summary {
  renewed: number;
  unchanged: number;
  skipped: number;
  /** Of the skipped, how many certificates have expired. */
  expired: number;
  failed: number;
  notProcessed: number;
  onChangeFailed: boolean;
}

function summarize(
  outcomes: Outcome[],
  notProcessed: number,
  onChangeFailed = false,
): Summary {
  const summary: Summary = {
    renewed: 0,
    unchanged: 0,
    skipped: 0,
    expired: 0,
    failed: 0,
    notProcessed,
    onChangeFailed,
  };
  for (const outcome of outcomes) count(summary, outcome);
  return summary;
}

/** Counts one outcome into `summary`: a run of 100,000 need keep no outcome to count it. */
function count(summary: Summary, outcome: Outcome): void {
  if (outcome.action === "interrupted") return;
  summary[outcome.action]++;
  if (outcome.skipReason === "expired") summary.expired++;
}

/** The Python bot's summary line, plus what it could not count. */
export function summaryLine(summary: Summary): string {
  const failed = summary.failed > 0 || summary.notProcessed > 0 || summary.onChangeFailed;
  let line = `${
    failed ? "Failure" : "Success"
  }: ${summary.unchanged} unchanged OCSP responses, ${summary.renewed} updated OCSP responses and ${summary.failed} failures.`;
  if (summary.skipped > 0) {
    const noUrl = summary.skipped - summary.expired;
    const why = summary.expired === 0
      ? "no OCSP URL"
      : noUrl === 0
      ? "expired"
      : `${noUrl} no OCSP URL, ${summary.expired} expired`;
    line += ` ${summary.skipped} certificates skipped (${why}).`;
  }
  if (summary.notProcessed > 0) {
    line += ` ${summary.notProcessed} certificates not processed (stop_on_error).`;
  }
  if (summary.onChangeFailed) line += " The on_change command failed.";
  return line;
}

/** `2d 4h`, `5h 3m`, `12m`: how long is left, as a person at 3 a.m. reads it. */
function formatDuration(ms: number): string {
  if (ms <= 0) return "expired";
  const minutes = Math.floor(ms / 60_000);
  const [days, hours] = [Math.floor(minutes / 1440), Math.floor(minutes / 60) % 24];
  if (days > 0) return `${days}d ${hours}h`;
  if (hours > 0) return `${hours}h ${minutes % 60}m`;
  return `${minutes}m`;
}

/**
 * --check's verdict on one certificate and the line that says it. CRITICAL:
 * the certificate expired, the responder said revoked, or the stored response
 * is missing, expired, not good or not verifying; failing renewals once less
 * than half the renewal window is left; any problem of a must-staple
 * certificate, as its handshakes would fail. WARNING: due and not tried yet
 * (due), or tried and failing (failing), or an HAProxy of the list has not
 * taken the stored response (failing).
 */
export function assess(
  plan: Plan,
  facts: Pick<Facts, "cert" | "stored">,
  attempt: Attempt | undefined,
  now: Date,
  pendingPush?: PendingPush,
): { health: Health; line: string } {
  let { health, text } = assessStored(plan, facts, attempt, now);
  if (pendingPush && health !== "critical") {
    health = "failing";
    text += `; HAProxy (socket ${
      pendingPush.sockets.map((socket) => `"${socket}"`).join(", ")
    }) has not taken it since ${
      formatTime(new Date(pendingPush.since * 1000))
    }: ${pendingPush.message}`;
  }
  return {
    health,
    line: `${text}: ${health === "critical" ? "CRITICAL" : health}${
      facts.cert.mustStaple ? ", must-staple" : ""
    }`,
  };
}

/** assess() of the stored response and the last attempt alone. */
function assessStored(
  plan: Plan,
  facts: Pick<Facts, "cert" | "stored">,
  attempt: Attempt | undefined,
  now: Date,
): { health: Health; text: string } {
  const { cert, stored } = facts;
  const verdict = (health: Health, text: string) => ({ health, text });
  if (plan.kind === "fail") return verdict("critical", `certificate ${plan.reason}`);
  if (plan.kind === "skip" && plan.why === "expired") {
    return verdict("critical", `certificate expired on ${formatTime(cert.notAfter)}; renew it`);
  }
  // A revocation seen is not undone by an older good answer stored before it.
  if (attempt?.outcome !== "revoked" && revocationStands(attempt, stored?.thisUpdate)) {
    return verdict(
      "critical",
      `a revoked answer signed at ${
        formatTime(new Date(attempt!.revokedSeen! * 1000))
      } was seen, after the stored good one; replace the certificate`,
    );
  }
  if (attempt?.outcome === "revoked") {
    const revoked = revocationText({
      revocationTime: attempt.revocationTime === undefined
        ? undefined
        : new Date(attempt.revocationTime * 1000),
      revocationReason: attempt.revocationReason,
    });
    return verdict(
      "critical",
      `the responder said at ${
        formatTime(new Date(attempt.time * 1000))
      } that the certificate is revoked${revoked}; replace it`,
    );
  }
  if (!stored) return verdict("critical", "no stored response");
  if (!stored.verified) {
    return verdict("critical", `stored response does not verify (${stored.problem})`);
  }
  if (stored.status !== "good" || !stored.thisUpdate) {
    return verdict("critical", `stored response says "${stored.status}"${revocationText(stored)}`);
  }
  const judged = judgeTimes(stored, now, cert);
  if (judged.problem) return verdict("critical", `stored response ${judged.problem}`);
  // A response that outlives its certificate: what --check reports is the certificate's end.
  const outlived = judged.outlives;
  const left = `${formatDuration(judged.end!.getTime() - now.getTime())} left`;
  const good =
    (stored.nextUpdate
      ? `good, nextUpdate ${formatTime(stored.nextUpdate)}${signerEndsFirst(stored)}`
      : `good, no nextUpdate`) +
    (outlived
      ? `, past the certificate's end at ${formatTime(cert.notAfter)} (${left})`
      : ` (${left})`);
  const renewal = plan.renewAt && !outlived ? `, renewal at ${formatTime(plan.renewAt)}` : "";
  if (attempt?.outcome === "failed") {
    const since = formatTime(new Date((attempt.failingSince ?? attempt.time) * 1000));
    const critical = cert.mustStaple || runsShort(stored, plan.renewAt, now);
    return verdict(
      critical ? "critical" : "failing",
      `${good}; renewals failing since ${since}: ${attempt.message}`,
    );
  }
  if (plan.kind === "renew") return verdict(cert.mustStaple ? "critical" : "due", good + renewal);
  return verdict("fresh", good + renewal);
}

/**
 * The Nagios plugin line and status of a --check run: the verdict, then, after
 * a `|`, performance data as the plugin guidelines define it, which Nagios
 * and Icinga graph: seconds to the soonest expiry (warning and critical at
 * `minimum_validity` and half of it, the renewal window and the point where
 * failing renewals turn CRITICAL), and the certificates by health.
 */
export function checkSummary(
  outcomes: Outcome[],
  now: Date,
  policy: RenewalPolicy = {},
  problems: readonly string[] = [],
  pendingChange?: PendingChange,
): { line: string; status: number } {
  if (outcomes.length === 0 && problems.length === 0) {
    // A config whose certificates all vanished checks nothing: that is no OK.
    return {
      line: "OCSP UNKNOWN - no certificates found in the configuration",
      status: NAGIOS.unknown,
    };
  }
  const checked = outcomes.filter((outcome) => outcome.health);
  const ids = (health: Health) => checked.filter((o) => o.health === health).map((o) => o.id);
  const [critical, failing, due] = [ids("critical"), ids("failing"), ids("due")];
  const named = (list: string[]) =>
    ` (${list.slice(0, 5).join(", ")}${list.length > 5 ? `, ${list.length - 5} more` : ""})`;
  // Every end counts (the signer's, the certificate's, the 12-hour rule's), as in each line.
  const expiries = checked.flatMap((o) =>
    o.status === "good" && o.endsAt ? [o.endsAt.getTime()] : []
  );
  const parts: string[] = [];
  if (problems.length > 0) {
    parts.push(`${problems.length} left out of the config (see the ERROR lines)`);
  }
  if (critical.length > 0) {
    parts.push(`${critical.length} of ${checked.length} critical${named(critical)}`);
  }
  if (pendingChange) {
    parts.push(
      `on_change failing since ${formatTime(new Date(pendingChange.since * 1000))}${
        named(pendingChange.ids)
      }: ${pendingChange.message}`,
    );
  }
  if (failing.length > 0) {
    parts.push(`${failing.length} of ${checked.length} renewals failing${named(failing)}`);
  }
  if (due.length > 0) {
    parts.push(`${due.length} of ${checked.length} responses due for renewal${named(due)}`);
  }
  const served = outcomes.filter((o) => o.served);
  const servedAs = (verdict: Served["verdict"]) =>
    served.filter((o) => o.served!.verdict === verdict).map((o) => o.id);
  const [servedCritical, servedWarning] = [servedAs("critical"), servedAs("warning")];
  const unreached = served.filter((o) => o.served!.unreached).map((o) => o.id);
  const stale = served.filter((o) => o.served!.verdict === "warning" && !o.served!.unreached)
    .map((o) => o.id);
  if (servedCritical.length > 0) {
    parts.push(`${servedCritical.length} of ${served.length} served wrong${named(servedCritical)}`);
  }
  if (stale.length > 0) {
    parts.push(
      `${stale.length} of ${served.length} served stale, by a server not reloaded, or not at all${
        named(stale)
      }`,
    );
  }
  if (unreached.length > 0) {
    parts.push(`${unreached.length} of ${served.length} servers not reached${named(unreached)}`);
  }
  if (parts.length === 0) parts.push(`${checked.length} responses fresh`);
  if (expiries.length > 0) {
    parts.push(`soonest expiry in ${formatDuration(Math.min(...expiries) - now.getTime())}`);
  }
  const skipped = outcomes.length - checked.length;
  if (skipped > 0) parts.push(`${skipped} skipped (no OCSP URL)`);
  const [label, status] = critical.length + servedCritical.length + problems.length > 0
    ? ["CRITICAL", NAGIOS.critical]
    : failing.length + due.length + servedWarning.length + (pendingChange ? 1 : 0) > 0
    ? ["WARNING", NAGIOS.warning]
    : ["OK", NAGIOS.ok];
  const perfdata: string[] = [];
  if (expiries.length > 0) {
    const seconds = Math.max(0, Math.round((Math.min(...expiries) - now.getTime()) / 1000));
    const warn = policy.minimumValidityMs === undefined ? "" : policy.minimumValidityMs / 1000;
    const crit = warn === "" ? "" : Math.round(warn / 2);
    perfdata.push(`soonest_expiry=${seconds}s;${warn};${crit};0`);
  }
  perfdata.push(
    `fresh=${checked.length - critical.length - failing.length - due.length}`,
    `due=${due.length}`,
    `failing=${failing.length}`,
    `critical=${critical.length}`,
    `skipped=${skipped}`,
  );
  if (served.length > 0) {
    perfdata.push(
      `served_ok=${served.length - servedCritical.length - servedWarning.length}`,
      `served_warning=${servedWarning.length}`,
      `served_critical=${servedCritical.length}`,
    );
  }
  return { line: `OCSP ${label} - ${parts.join(", ")} | ${perfdata.join(" ")}`, status };
}

/** A time the state keeps in seconds, as JSON shows times. */
function isoSeconds(seconds: number | undefined): string | null {
  return seconds === undefined ? null : new Date(seconds * 1000).toISOString();
}

/**
 * The --json document: every certificate by id, and the totals; or, when
 * the run could not start (a config that cannot be read), the error.
 */
export function jsonReport(
  mode: Mode,
  outcomes: Outcome[],
  totals: Record<string, number>,
  status: number,
  now: Date,
  error?: string,
): string {
  const certificates: Record<string, unknown> = {};
  for (const outcome of outcomes) {
    const attempt = outcome.attempt;
    certificates[outcome.id] = {
      certificate: outcome.certPath,
      response: outcome.responsePath,
      responderUrl: outcome.responderUrl ?? null,
      mustStaple: outcome.mustStaple ?? null,
      status: outcome.status ?? null,
      thisUpdate: outcome.thisUpdate?.toISOString() ?? null,
      nextUpdate: outcome.nextUpdate?.toISOString() ?? null,
      renewalTime: outcome.renewAt?.toISOString() ?? null,
      action: outcome.action,
      ...(outcome.health ? { health: outcome.health } : {}),
      lastAttempt: attempt
        ? {
          time: isoSeconds(attempt.time),
          outcome: attempt.outcome,
          message: attempt.message ?? null,
        }
        : null,
      failingSince: isoSeconds(attempt?.failingSince),
      revoked: revocationStands(attempt, outcome.thisUpdate)
        ? { time: isoSeconds(attempt!.revocationTime), reason: attempt!.revocationReason ?? null }
        : null,
      served: outcome.served
        ? {
          address: outcome.served.address,
          verdict: outcome.served.verdict,
          message: outcome.served.message,
          thisUpdate: outcome.served.thisUpdate?.toISOString() ?? null,
          nextUpdate: outcome.served.nextUpdate?.toISOString() ?? null,
        }
        : null,
      error: outcome.error ?? null,
    };
  }
  return JSON.stringify(
    {
      ocspbot: VERSION,
      mode,
      time: now.toISOString(),
      status,
      ...(error === undefined ? {} : { error }),
      totals,
      certificates,
    },
    null,
    2,
  );
}

/** A label value in Prometheus' text format. */
function labelValue(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

/**
 * The node_exporter textfile of a run or a --check: per certificate (label
 * `id`) the stored response's dates, the renewal time, the last attempt and
 * whether it succeeded, revoked and must-staple; per run (label `mode`) its
 * time, duration, exit status and counts. `otherRuns` are the previous
 * file's lines about the other mode's run, kept so that neither hides the other.
 */
export function metricsText(
  mode: Mode,
  outcomes: Outcome[],
  totals: Record<string, number>,
  status: number,
  now: Date,
  durationSeconds: number,
  otherRuns: string[] = [],
): string {
  const seconds = (time: Date | undefined) => time && time.getTime() / 1000;
  const perCertificate: [string, string, (o: Outcome) => number | undefined][] = [
    [
      "response_this_update_timestamp_seconds",
      "thisUpdate of the stored response.",
      (o) => seconds(o.thisUpdate),
    ],
    [
      "response_next_update_timestamp_seconds",
      "nextUpdate of the stored response.",
      (o) => seconds(o.nextUpdate),
    ],
    [
      "response_renewal_timestamp_seconds",
      "When the stored response is due for renewal.",
      (o) => seconds(o.renewAt),
    ],
    ["last_attempt_timestamp_seconds", "When a responder was last asked.", (o) => o.attempt?.time],
    [
      "last_attempt_success",
      "1 if the last request renewed or confirmed the response.",
      (o) => o.attempt && (o.attempt.outcome === "renewed" || o.attempt.outcome === "same" ? 1 : 0),
    ],
    [
      "certificate_revoked",
      "1 if the responder said the certificate is revoked.",
      (o) => o.attempt ? (revocationStands(o.attempt, o.thisUpdate) ? 1 : 0) : undefined,
    ],
    [
      "certificate_must_staple",
      "1 if the certificate requires a staple (RFC 7633).",
      (o) => o.mustStaple === undefined ? undefined : o.mustStaple ? 1 : 0,
    ],
    [
      "served_ok",
      "1 if the server (serve) staples the stored response or a newer one, at the last --check.",
      (o) => o.served && (o.served.verdict === "ok" ? 1 : 0),
    ],
    [
      "served_response_this_update_timestamp_seconds",
      "thisUpdate of the response the server (serve) stapled, at the last --check.",
      (o) => seconds(o.served?.thisUpdate),
    ],
  ];
  const lines: string[] = [];
  const family = (name: string, help: string) =>
    lines.push(`# HELP ocspbot_${name} ${help}`, `# TYPE ocspbot_${name} gauge`);
  for (const [name, help, value] of perCertificate) {
    family(name, help);
    for (const outcome of outcomes) {
      const sample = value(outcome);
      if (sample !== undefined) {
        lines.push(`ocspbot_${name}{id="${labelValue(outcome.id)}"} ${sample}`);
      }
    }
  }
  const run = (name: string, help: string, samples: [string, number][]) => {
    family(name, help);
    lines.push(...otherRuns.filter((line) => line.startsWith(`ocspbot_${name}{`)));
    for (const [labels, sample] of samples) {
      lines.push(`ocspbot_${name}{mode="${mode}"${labels}} ${sample}`);
    }
  };
  run("run_timestamp_seconds", "When the last run (or --check) started.", [["", seconds(now)!]]);
  run("run_duration_seconds", "How long the last run (or --check) took.", [["", durationSeconds]]);
  run("run_exit_status", "The exit status of the last run (or --check).", [["", status]]);
  run(
    "run_certificates",
    "Certificates of the last run (or --check), by result.",
    Object.entries(totals).map(([result, count]) => [`,result="${labelValue(result)}"`, count]),
  );
  return lines.join("\n") + "\n";
}

export function exitStatus(summary: Summary): number {
  if (summary.failed > 0 || summary.notProcessed > 0 || summary.onChangeFailed) {
    return EXIT.failure;
  }
  return Math.min(summary.renewed, EXIT.maxRenewed);
}

/**
 * What an output format does, in one row: where the log lines go, whether
 * its report needs every outcome kept, and what it prints when a run or
 * --check ends, or cannot go on. A new format is a row here and its flag in
 * parseCommandLine().
 */
interface Reporter {
  /** stdout is the report's alone: log lines go to stderr. */
  ownsStdout: boolean;
  /** The report lists every certificate, so each outcome is kept. */
  keepsOutcomes: boolean;
  /** A command line that does not parse is answered with the usage too. */
  showsUsage: boolean;
  /** Prints the report; `message` says why the run could not go on. */
  report(output: Output, mode: Mode, run: RunReport, now: Date, message?: string): void;
}

const REPORTERS: Record<Format, Reporter> = {
  // The log lines are the report.
  text: { ownsStdout: false, keepsOutcomes: false, showsUsage: true, report: () => {} },
  json: {
    ownsStdout: true,
    keepsOutcomes: true,
    showsUsage: false,
    report: (output, mode, run, now, message) =>
      output.write(
        output.stdout,
        jsonReport(mode, run.outcomes, run.totals, run.status, now, message) + "\n",
      ),
  },
};

/** How a run or a --check ends: its exit status, and what became of each certificate. */
interface RunReport {
  status: number;
  outcomes: Outcome[];
  totals: Record<string, number>;
}

/**
 * The lines of the metrics file as the last run wrote them, only if it is
 * ocspbot's own: another user's file, or a link to one, would have root copy
 * its lines into a file everybody may read.
 */
function previousMetrics(file: string, files: Files, log: Logger): string[] {
  try {
    const read = files.read(file, "metrics", "trusted");
    if (read.ours) return decoder.decode(read.bytes).split("\n");
    log.warn(
      `metrics_file "${file}" is owned by uid ${read.info.uid}, writable by others or a second name of another file: its lines are not carried over, and it is replaced`,
    );
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      log.warn(`metrics_file: ${errorText(error)}: its lines are not carried over`);
    }
  }
  return [];
}

/**
 * Writes the Prometheus metrics of a run or a --check, atomically; the
 * figures of the other kind's last run stay. A failure is only a warning:
 * the staples matter more than the metrics about them.
 */
async function writeMetrics(
  file: string,
  mode: Mode,
  report: RunReport,
  durationSeconds: number,
  context: RunContext,
): Promise<void> {
  const { now, log, files } = context;
  try {
    const other = mode === "run" ? 'mode="check"' : 'mode="run"';
    const previous = files.entry(file) ? previousMetrics(file, files, log) : [];
    const otherRuns = previous.filter((line) =>
      line.startsWith("ocspbot_run_") && line.includes(other)
    );
    const text = metricsText(
      mode,
      report.outcomes,
      report.totals,
      report.status,
      now,
      durationSeconds,
      otherRuns,
    );
    const warnings = await files.write(file, encoder.encode(text));
    for (const warning of warnings) log.warn(`metrics_file ${warning}`);
  } catch (error) {
    log.warn(`Cannot write metrics_file: ${errorText(error)}`);
  }
}

type Writer = { writeSync(p: Uint8Array): number };

function writeAll(writer: Writer, bytes: Uint8Array) {
  for (let done = 0; done < bytes.length;) {
    done += writer.writeSync(bytes.subarray(done));
  }
}

/**
 * Where lines go: stdout, stderr or a log file. One that fails to take a
 * write (a full disk, /dev/full, a pipe whose reader has gone) is written to
 * no more, and `failure` says why.
 */
class Destination {
  failure?: string;
  /**
   * It is systemd's journal: each line starts with its sd-daemon priority
   * (`<3>` error, `<4>` warning, `<6>` info), so that `journalctl -p
   * warning` shows the warnings; the journal strips the prefix.
   */
  journal = false;

  constructor(
    readonly name: string,
    readonly writer: Writer,
    readonly close: () => void = () => {},
  ) {}
}

/**
 * A run's output. Lines wait here in the order logged, whatever their
 * destination, and go out together when the event loop next turns, so that
 * 10,000 certificates with nothing due cost a few writes rather than 10,000,
 * while a run that waits on a responder still shows its lines as it goes.
 *
 * Writing never throws: a destination that fails is said once on the first
 * one that still works, and the run goes on, since a lost log line must not
 * cost a renewal. The exit status then tells (exitStatus()).
 */
export class Output {
  readonly stdout: Destination;
  readonly stderr: Destination;
  /** Where a failure is said: an error log first, when there is one, then the console. */
  readonly fallbacks: Destination[];
  #pending: { destination: Destination; text: string }[] = [];
  #length = 0;
  #failed = false;
  #timer?: ReturnType<typeof setTimeout>;

  /** The console's streams, or others (a test's, to read what main() says). */
  /** @param journalStream `JOURNAL_STREAM`, which names the journal's stream, if any. */
  constructor(console: { stdout: Writer; stderr: Writer } = Deno, journalStream?: string) {
    this.stdout = new Destination("stdout", console.stdout);
    this.stderr = new Destination("stderr", console.stderr);
    this.fallbacks = [this.stderr, this.stdout];
    if (console === Deno) {
      this.stdout.journal = isJournal(1, journalStream);
      this.stderr.journal = isJournal(2, journalStream);
    }
  }

  /** With --json, stdout is the document's alone. */
  reserveStdout(): void {
    this.fallbacks.splice(this.fallbacks.indexOf(this.stdout), 1);
  }

  queue(destination: Destination, line: string, priority: Priority = PRIORITY.info): void {
    if (this.#pending.length === 0) this.#timer = setTimeout(() => this.flush(), 0);
    this.#pending.push({ destination, text: Output.#lineFor(destination, line, priority) });
    this.#length += line.length + 1;
    if (this.#length > PENDING_LIMIT) this.flush();
  }

  /** Writes every queued line, each run of lines for one destination in one write. */
  flush(): void {
    clearTimeout(this.#timer);
    const pending = this.#pending;
    this.#pending = [];
    this.#length = 0;
    for (let start = 0; start < pending.length;) {
      const { destination } = pending[start];
      let end = start;
      let text = "";
      while (end < pending.length && pending[end].destination === destination) {
        text += pending[end++].text;
      }
      this.write(destination, text);
      start = end;
    }
  }

  /** Writes `text` now, after what is queued; a failure is said, never thrown. */
  write(destination: Destination, text: string): void {
    if (this.#pending.length > 0) this.flush();
    if (destination.failure !== undefined) return;
    try {
      writeAll(destination.writer, encoder.encode(text));
    } catch (error) {
      destination.failure = errorText(error);
      this.#failed = true;
      const witness = this.fallbacks.find((other) =>
        other !== destination && other.failure === undefined
      );
      if (witness) {
        this.say(
          witness,
          `ERROR: Cannot write to ${destination.name}: ${destination.failure}; ` +
            "what ocspbot says there is lost from here on, the run goes on",
          PRIORITY.error,
        );
      }
    }
  }

  /** Writes one line now, after what is queued, as queue() would write it. */
  say(destination: Destination, line: string, priority: Priority): void {
    this.write(destination, Output.#lineFor(destination, line, priority));
  }

  static #lineFor(destination: Destination, line: string, priority: Priority): string {
    return destination.journal ? `<${priority}>${line}\n` : `${line}\n`;
  }

  /**
   * A log that could not be opened: said on stderr, and counted as output
   * that failed, so that "nothing renewed" cannot hide it.
   */
  unopened(message: string): void {
    this.#failed = true;
    this.say(this.stderr, `ERROR: ${printable(message)}`, PRIORITY.error);
  }

  /** Whether a line could not be written somewhere. */
  get failed(): boolean {
    return this.#failed;
  }

  /**
   * The status a run ends with once its output failed: a count of renewals
   * stays, as they happened and a server must reload them; "nothing renewed"
   * becomes 255, since what went wrong could not be said.
   */
  exitStatus(status: number): number {
    return this.failed && status === 0 ? EXIT.failure : status;
  }
}

/** A run that never waits (nothing due) writes its lines in chunks of this many characters. */
const PENDING_LIMIT = 64 * 1024;

/**
 * A line as it may be printed: control characters, which could end the line
 * and forge another (an id or a file name holding a newline), are escaped.
 */
export function printable(line: string): string {
  // deno-lint-ignore no-control-regex -- finding control characters is the point
  return line.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/g, (character) => {
    const named: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
    const code = character.charCodeAt(0);
    return named[character] ??
      (code > 0xff ? `\\u${code.toString(16)}` : `\\x${code.toString(16).padStart(2, "0")}`);
  });
}

/**
 * Output lines go to the output destination; warnings and errors to the
 * error destination, and to the output log too when that is a separate
 * file, so it tells the whole story of a run.
 */
class Logger {
  constructor(
    private readonly output: Output,
    private readonly out: Destination,
    private readonly err: Destination,
    private readonly errorsAlsoToOut: boolean,
    private readonly quiet = false,
    private readonly prefix = "",
  ) {}

  /**
   * Opens the configured log files, or uses stdout and stderr; with --json
   * stdout is the JSON document's alone.
   */
  static open(
    output: Output,
    config: Config,
    now: Date,
    options: { quiet: boolean; format: Format; timeZone?: string },
    warnings: string[],
    files: Files,
  ): Logger {
    const outName = config.outputLog && formatLogName(config.outputLog, now, options.timeZone);
    const errName = config.errorLog && formatLogName(config.errorLog, now, options.timeZone);
    const console = REPORTERS[options.format].ownsStdout ? output.stderr : output.stdout;
    // A log that cannot be opened costs its lines on the console, not the renewals.
    const open = (name: string, key: string, instead: Destination) => {
      try {
        return files.openLog(name, key, warnings);
      } catch (error) {
        output.unopened(
          `Cannot open ${key} "${name}" of config "${config.file}": ${
            errorText(error)
          }; its lines go to ${instead.name} instead`,
        );
        return instead;
      }
    };
    const out = outName ? open(outName, "output_log", console) : console;
    const err = errName
      ? (errName === outName ? out : open(errName, "error_log", output.stderr))
      : output.stderr;
    if (err !== output.stderr) output.fallbacks.unshift(err);
    return new Logger(output, out, err, out !== console && err !== out, options.quiet);
  }

  /** The console only: for --check, whose verdict belongs on stdout. */
  static console(output: Output, options: { quiet: boolean; format: Format }): Logger {
    const out = REPORTERS[options.format].ownsStdout ? output.stderr : output.stdout;
    return new Logger(output, out, output.stderr, false, options.quiet);
  }

  forDomain(id: string): Logger {
    return new Logger(
      this.output,
      this.out,
      this.err,
      this.errorsAlsoToOut,
      this.quiet,
      `[${id}] `,
    );
  }

  info(message: string): void {
    if (!this.quiet) this.#line(this.out, this.prefix + message);
  }

  /** A line --quiet keeps: --check's verdict. */
  result(message: string): void {
    this.#line(this.out, this.prefix + message);
  }

  warn(message: string): void {
    this.#problem(`${this.prefix}WARNING: ${message}`, PRIORITY.warning);
  }

  error(message: string): void {
    this.#problem(`${this.prefix}ERROR: ${message}`, PRIORITY.error);
  }

  #problem(line: string, priority: Priority): void {
    this.#line(this.err, line, priority);
    if (this.errorsAlsoToOut) this.#line(this.out, line, priority);
  }

  #line(destination: Destination, line: string, priority: Priority = PRIORITY.info): void {
    this.output.queue(destination, printable(line), priority);
  }

  close(): void {
    this.output.flush();
    for (const destination of new Set([this.out, this.err])) destination.close();
  }
}

// -------------------------------------------------------------------- run --
// The hourly run and --check, as main() drives them, with the surroundings
// (clock, environment, working directory) passed in rather than read.

/**
 * What a run takes from the process around it: the real clock, the
 * environment and the working directory. They are read here and nowhere
 * else, and passed in, so that a test gives its own instead of sleeping or
 * changing the process's environment.
 */
export interface Surroundings {
  /** Milliseconds since 1970 on the real clock: file stamps and the run's time. */
  clock(): number;
  /** The environment, for ocspbot and the programs it runs; undefined without --allow-env. */
  env?: Record<string, string>;
  /** The folder relative paths start at. */
  cwd: string;
}

/** The process's own surroundings. */
export function surroundings(): Surroundings {
  let env: Record<string, string> | undefined;
  try {
    env = Deno.env.toObject();
  } catch {
    // Without --allow-env, the children inherit it unseen, and ocspbot does without.
  }
  return { clock: () => Date.now(), env, cwd: Deno.cwd() };
}

/**
 * Runs `work` with the process in `folder`, where relative paths (the
 * config's, Deno's own resolution) start, and back where it was after.
 */
async function workingIn<T>(folder: string, work: () => Promise<T>): Promise<T> {
  const before = Deno.cwd();
  if (before === folder) return await work();
  Deno.chdir(folder);
  try {
    return await work();
  } finally {
    Deno.chdir(before);
  }
}

/**
 * What a run shares, built by main(): nothing of a run lives in the module,
 * so main() also runs in-process, as often as a test likes.
 */
interface RunContext {
  config: Config;
  now: Date;
  world: Surroundings;
  /** When the run started, on performance.now()'s clock: deadlines count from it. */
  started: number;
  log: Logger;
  /** Verified responses by path, shared by the workers, saved after the run. */
  state: State;
  /** The files as this run sees and changes them. */
  files: Files;
  /** Aborted by SIGTERM, SIGINT or SIGHUP: children stop, waits end, no new work starts. */
  stop: AbortSignal;
  /** Each target's files, parsed once a run when needed. */
  parsed: Map<Target, ParsedFiles>;
  /** --force: renew every certificate the run covers now. */
  forced: boolean;
  /** What forced it, for the log: "--force", or --renewed's new certificate. */
  forcedBy: string;
  /** A report of every certificate is asked for (--json, metrics_file): keep each outcome. */
  keepOutcomes: boolean;
  /**
   * Responder URLs that gave no answer at all to a certificate's every
   * attempt in this run, with why: the others they serve are not made to
   * wait out the timeout again (OpenSSL 3.0 reports even a refused
   * connection only when the timeout ends).
   */
  silentResponders: Map<string, string>;
  /**
   * --renewed: how long to keep asking a responder that does not know the
   * new certificate, before the hook fails; undefined in other runs.
   */
  renewedWaitSeconds?: number;
}

/** The signals that end a run early, keeping what finished. */
const STOP_SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP"] as const;

/** How long an interrupted run may take to wind down before it exits regardless. */
const STOP_GRACE_SECONDS = 10;

/** The facts of an outcome: what the response says, when it is due, the last attempt. */
function describe(
  target: Target,
  attempt: Attempt | undefined,
  facts?: Pick<Facts, "cert" | "urls">,
  report?: ResponseReport,
  renewAt?: Date,
): Omit<Outcome, "action"> {
  return {
    id: target.id,
    certPath: target.certPath,
    responsePath: target.responsePath,
    responderUrl: facts?.urls[0],
    mustStaple: facts?.cert.mustStaple,
    status: report?.status,
    thisUpdate: report?.thisUpdate,
    nextUpdate: report?.nextUpdate,
    endsAt: report && usableUntil(report, facts?.cert),
    renewAt,
    attempt,
  };
}

/**
 * Puts a verified response in place. The backup comes first, so that a
 * renewal happens whole or not at all; the stored response stays on failure.
 * Returns what to add to the log line.
 */
async function installResponse(
  target: Target,
  response: Uint8Array,
  context: RunContext,
  log: Logger,
): Promise<string> {
  const { config, files } = context;
  let backup = "";
  try {
    if (config.makeBackups) {
      const stem = backupStem(config, target.responsePath);
      const timeZone = context.world.env?.TZ;
      backup = `, backup "${await makeBackup(stem, response, context.now, log, files, timeZone)}"`;
      if (config.keepBackups) {
        const removed = pruneBackups(stem, config.keepBackups, files);
        if (removed.length > 0) backup += ` (${removed.length} older removed)`;
      }
    }
    const warnings = await files.write(target.responsePath, response);
    for (const warning of warnings) log.warn(warning);
  } catch (error) {
    throw new Error(`${errorText(error)}; the stored response stays as it was`);
  }
  return backup;
}

/**
 * Removes what an earlier run left beside a response; what cannot be
 * removed (another user's folder of that name) is a warning, never the
 * renewal's failure.
 */
function removeLeftover(file: string, files: Files, log: Logger): void {
  try {
    files.remove(file);
  } catch (error) {
    log.warn(`Cannot remove "${file}": ${errorText(error)}; remove it by hand`);
  }
}

/**
 * Keeps an answer that failed its checks for inspection; returns the words
 * that say where it is, or why it is not.
 */
async function keepRejected(
  responsePath: string,
  answer: Uint8Array,
  files: Files,
): Promise<string> {
  const kept = rejectedPath(responsePath);
  try {
    await files.write(kept, answer);
    return `the answer is in "${kept}" for inspection`;
  } catch (error) {
    return `the answer could not be kept: ${errorText(error)}`;
  }
}

/**
 * One certificate of the hourly run: inspect what is stored, plan, and
 * renew when due.
 */
async function processTarget(target: Target, context: RunContext): Promise<Outcome> {
  const log = context.log.forDomain(target.id);
  const attempt = context.state.attempt(target.responsePath);
  let outcome = describe(target, attempt);
  try {
    const facts = await inspect(target, context);
    const plan = planTarget(facts, context.config.policy, context.now, {
      forced: context.forced,
      forcedBy: context.forcedBy,
      lastAttempt: attempt,
    });
    outcome = describe(target, attempt, facts, facts.stored, plan.renewAt);
    switch (plan.kind) {
      case "skip":
        if (plan.why === "expired") log.warn(`Certificate "${target.certPath}" ${plan.reason}`);
        else log.info(`Certificate "${target.certPath}" ${plan.reason}`);
        return { ...outcome, action: "skipped", skipReason: plan.why };
      case "fail":
        throw new Error(`Certificate "${target.certPath}" ${plan.reason}`);
      case "fresh": {
        log.info(`OCSP response is fine: ${plan.reason}`);
        const unchanged: Outcome = { ...outcome, action: "unchanged" };
        // Looked up here: the quiet hour's path takes no await for it.
        const pending = context.state.pendingPush(target.responsePath);
        return pending
          ? await pushPending(target, facts, pending, unchanged, context, log)
          : unchanged;
      }
      case "renew": {
        const renewed = await renew(target, facts, plan, context, log, outcome);
        const pending = context.state.pendingPush(target.responsePath);
        if (renewed.action === "renewed" || !pending) return renewed;
        return await pushPending(target, facts, pending, renewed, context, log);
      }
    }
  } catch (error) {
    // The run says once that it was stopped, not once per certificate.
    if (error instanceof Interrupted) return { ...outcome, action: "interrupted" };
    log.error(errorText(error));
    return {
      ...outcome,
      attempt: context.state.attempt(target.responsePath),
      action: "failed",
      error: errorText(error),
    };
  }
}

/**
 * Fetches a new response, and puts it in place when it is better than the
 * stored one. However this ends, it is remembered as the certificate's last
 * attempt, for --check and the metrics.
 */
async function renew(
  target: Target,
  facts: Facts,
  plan: Extract<Plan, { kind: "renew" }>,
  context: RunContext,
  log: Logger,
  outcome: Omit<Outcome, "action">,
): Promise<Outcome> {
  const { config, now, state, files } = context;
  const { cert, storedEntry, stored, inputs } = facts;
  let attempt: Attempt | undefined;
  const remember = (result: AttemptOutcome, details?: Parameters<typeof nextAttempt>[3]) => {
    attempt = nextAttempt(outcome.attempt, result, now, details);
    state.setAttempt(target.responsePath, attempt);
  };
  try {
    const refused = reservedName(target.responsePath, config);
    if (refused) throw new Error(refused);
    log.info(`Renewing OCSP response from ${plan.urls[0]}: ${plan.reason}`);
    // ocspbot 1.0 and the Python bot left answers here; HAProxy's `crt <dir>` chokes on them.
    removeLeftover(`${target.responsePath}.new`, files, log);
    const judging = {
      revokedSeen: outcome.attempt?.revokedSeen,
      haproxy: (target.haproxySocket ?? []).length > 0,
    };
    // A deploy hook asks again for a while: the responder may not know the new certificate yet.
    const hook = context.renewedWaitSeconds;
    const askUntil = performance.now() + (hook ?? 0) * 1000;
    const every = Math.min(RENEWED_ASK_EVERY_MAX_SECONDS, (hook ?? 0) / RENEWED_ASKS);
    let fetched: Awaited<ReturnType<typeof fetchWithRetries>>;
    let rejection: string | undefined;
    for (;;) {
      fetched = await fetchWithRetries(target, plan.urls, context, log);
      rejection = rejectFetched(fetched.report, stored, now, config.policy, judging);
      const left = askUntil - performance.now();
      if (!rejection || !notYetKnown(fetched.report, cert, now) || left <= 0) break;
      const seconds = Math.min(every, left / 1000);
      log.info(
        `Responder does not know the new certificate yet (${rejection}); asking again in ${
          Math.ceil(seconds)
        } s, for up to ${formatDuration(left)} more (--renewed-wait)`,
      );
      await pause(seconds * 1000, context.stop);
    }
    const { report } = fetched;
    const revocation = report.verified && report.status === "revoked"
      ? {
        revocationTime: report.revocationTime && epochSeconds(report.revocationTime),
        revocationReason: report.revocationReason,
        revokedSeen: report.thisUpdate && epochSeconds(report.thisUpdate),
      }
      : undefined;
    if (rejection && notYetKnown(report, cert, now)) {
      if (hook !== undefined) {
        throw new Error(
          `The responder still does not know the new certificate "${target.certPath}" after ${hook} s (${rejection}); the server keeps the old certificate's response until a run gets one (hourly, or "ocspbot --renewed" again)`,
        );
      }
      remember("failed", { message: rejection });
      log.warn(
        `Certificate "${target.certPath}" was issued ${
          formatDuration(now.getTime() - cert.notBefore.getTime())
        } ago and is not yet known to the responder (${rejection}); retried next run`,
      );
      return { ...outcome, attempt, action: "unchanged" };
    }
    if (rejection) {
      if (revocation) remember("revoked", { message: rejection, ...revocation });
      const kept = storedEntry ? "the stored response stays" : "nothing is stored";
      throw new Error(
        `${rejection}; ${kept}, ${await keepRejected(target.responsePath, fetched.bytes, files)}`,
      );
    }
    const fetchedHash = sha256(fetched.bytes);
    if (entryHash(storedEntry) === fetchedHash) {
      remember("same");
      sameResponseAgain(stored!, plan.renewAt, now, log);
      return { ...outcome, attempt, action: "unchanged" };
    }
    const backup = await installResponse(target, fetched.bytes, context, log);
    removeLeftover(rejectedPath(target.responsePath), files, log);
    // The certificate asked about is the one read for the request, which a live/ link
    // re-pointed since inspect() may have changed: it is what the record names.
    const asked = parsedFiles(target, context);
    const askedHash = sha256(asked.bytes);
    const same = entryHash(inputs[0]) === askedHash;
    // Just written (or changed meanwhile), so no stamp yet: the next run reads it once more.
    const entries = [fileEntry("", fetchedHash), same ? inputs[0] : fileEntry("", askedHash)];
    const judged = same ? cert : certificateInfo(asked.bundle.leaf.x509);
    state.setVerified(
      target.responsePath,
      recordOf(report, judged, [...entries, ...inputs.slice(1)]),
    );
    if (revocation) remember("revoked", { message: "revoked", ...revocation });
    else remember("renewed");
    announce(report, backup, log);
    // The file is the renewal: a HAProxy that missed it is pushed to again by each run.
    if (target.haproxySocket?.length) await pushToEvery(target, fetched.bytes, context, log);
    return {
      ...describe(target, attempt, facts, report, renewalTime(config.policy, cert, report)),
      responderUrl: fetched.url,
      action: "renewed",
    };
  } catch (error) {
    if (!(error instanceof Interrupted) && !attempt) {
      remember("failed", { message: errorText(error) });
    }
    throw error;
  }
}

/**
 * Most CAs pre-sign their responses, and answer with the stored one until
 * they sign the next: an info line, so cron stays quiet, until the stored
 * response has less than half of its renewal window left.
 */
function sameResponseAgain(
  stored: ResponseReport,
  renewAt: Date | undefined,
  now: Date,
  log: Logger,
): void {
  const expiry = responseExpiry(stored);
  const left = formatDuration(expiry - now.getTime());
  if (runsShort(stored, renewAt, now)) {
    log.warn(
      `Responder has had nothing newer since ${formatTime(stored.thisUpdate!)}; ${left} left`,
    );
  } else {
    log.info(`Responder sent the stored response again; asking again next run (${left} left)`);
  }
}

/** Says what was stored, and what a stapling server should know of it. */
function announce(
  report: ResponseReport,
  backup: string,
  log: Logger,
): void {
  const { thisUpdate, nextUpdate } = report;
  const dates = `thisUpdate ${formatTime(thisUpdate!)}, nextUpdate ${
    nextUpdate ? formatTime(nextUpdate) : "none"
  }${backup}`;
  if (report.status === "revoked") {
    log.warn(
      `Responder says the certificate is revoked${
        revocationText(report)
      }; its signed answer is now the staple (on_revoked: staple), ${dates}: replace the certificate`,
    );
  } else log.info(`Stored new OCSP response: good, ${dates}`);
  if (!nextUpdate) {
    log.info(`New response has no nextUpdate; it is treated as living ${lifespanRule()}`);
  }
  // Said now, before a server that reads the file finds out alone.
  const refused = haproxyRefuses(report);
  if (refused) log.warn(`HAProxy will not load the new response: ${refused}; other servers do`);
}

/** --check: how one certificate's staple stands; nothing changes, nobody is asked. */
async function checkTarget(
  target: Target,
  context: RunContext,
  prober: Prober,
): Promise<Outcome> {
  const log = context.log.forDomain(target.id);
  const attempt = context.state.attempt(target.responsePath);
  try {
    const facts = await inspect(target, context);
    // The plan a run would make; --check never forces.
    const plan = planTarget(facts, context.config.policy, context.now);
    const outcome = describe(target, attempt, facts, facts.stored, plan.renewAt);
    if (plan.kind === "skip" && plan.why === "no OCSP URL") {
      log.info("no OCSP URL in the certificate: skipped");
      return { ...outcome, action: "skipped", skipReason: plan.why };
    }
    const pendingPush = context.state.pendingPush(target.responsePath);
    const { health, line } = assess(plan, facts, attempt, context.now, pendingPush);
    log.info(line);
    const served = target.serve && await askServer(target, target.serve, facts, context, prober);
    if (served) {
      log.info(
        `served: ${served.message}: ${
          served.verdict === "ok" ? "OK" : served.verdict.toUpperCase()
        }`,
      );
    }
    return { ...outcome, action: "unchanged", health, ...(served ? { served } : {}) };
  } catch (error) {
    if (error instanceof Interrupted) throw error;
    log.error(errorText(error));
    return {
      ...describe(target, attempt),
      action: "failed",
      health: "critical",
      error: errorText(error),
    };
  }
}

/**
 * Maps items through `work` with at most `limit` in flight. Once `stop`
 * says so, no new item is started, but those running are awaited.
 */
export async function runPool<T, R>(
  items: T[],
  limit: number,
  work: (item: T) => Promise<R>,
  stop: (result: R) => boolean,
  keep: (result: R) => boolean = () => true,
): Promise<{ results: R[]; notStarted: number }> {
  const results: R[] = [];
  let next = 0;
  let stopped = false;
  const worker = async () => {
    while (!stopped && next < items.length) {
      const result = await work(items[next++]);
      if (keep(result)) results.push(result);
      if (stop(result)) stopped = true;
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return { results, notStarted: items.length - next };
}

/** `OCSPBOT_FAKE_NOW`, the test harnesses' clock, when it is set. */
function fakeClock(world: Surroundings): string | undefined {
  return world.env?.OCSPBOT_FAKE_NOW || undefined;
}

/** Test seam: `OCSPBOT_FAKE_NOW` (an ISO time) replaces the clock. */
function currentTime(world: Surroundings): Date {
  const fake = fakeClock(world);
  if (!fake) return new Date(world.clock());
  const now = new Date(fake);
  if (Number.isNaN(now.getTime())) {
    throw new ExitError(`OCSPBOT_FAKE_NOW "${fake}" is not a time`, EXIT.badArguments);
  }
  return now;
}

/**
 * --check: how every certificate's staple stands, as a Nagios plugin says
 * it; nothing changes and no responder is asked.
 */
async function runChecks(targets: Target[], context: RunContext): Promise<RunReport> {
  const { config, log, now } = context;
  const prober = new Prober(context.started + CHECK_DEADLINE_SECONDS * 1000);
  // Handshakes wait on the network, not on this machine: many go at once.
  const probing = targets.some((target) => target.serve) ? PROBES_AT_ONCE : 1;
  const { results } = await runPool(
    targets,
    Math.max(config.parallelThreads, probing),
    (target) => checkTarget(target, context, prober),
    () => context.stop.aborted,
  );
  if (context.stop.aborted) throw new Interrupted(context.stop);
  const { line, status } = checkSummary(
    results,
    now,
    config.policy,
    config.problems,
    context.state.pendingChange,
  );
  log.result(line);
  const count = (health: Health) => results.filter((o) => o.health === health).length;
  const totals = {
    fresh: count("fresh"),
    due: count("due"),
    failing: count("failing"),
    critical: count("critical"),
    skipped: results.filter((o) => o.action === "skipped").length,
  };
  return { status, outcomes: results, totals };
}

/**
 * The hourly run: renews what is due, saves what was learned, runs on_change
 * after renewals. A signal stops it early, keeping what finished.
 */
async function runRenewals(targets: Target[], context: RunContext): Promise<RunReport> {
  const { config, log, stop } = context;
  const summary = summarize([], 0);
  // Each outcome is counted; only those a report needs are kept.
  const { results, notStarted } = await runPool(
    targets,
    config.parallelThreads,
    async (target) => {
      const outcome = await processTarget(target, context);
      count(summary, outcome);
      return outcome;
    },
    (outcome) => stop.aborted || (config.stopOnError && outcome.action === "failed"),
    (outcome) => context.keepOutcomes || outcome.action === "renewed",
  );
  summary.notProcessed = notStarted;
  const renewed = results.filter((o) => o.action === "renewed").map((o) => o.id);
  await announceChanges(renewed, summary, context);
  try {
    let covered: Set<string> | undefined;
    const warnings = await context.state.save(
      (file) => (covered ??= new Set(targets.map((target) => target.responsePath))).has(file),
      context.files,
    );
    for (const warning of warnings) log.warn(`State file ${warning}`);
  } catch (error) {
    log.warn(`${errorText(error)}; the next run verifies every response again`);
  }
  const { unchanged, skipped, failed, notProcessed } = summary;
  const totals = { renewed: summary.renewed, unchanged, skipped, failed, notProcessed };
  if (stop.aborted) {
    // Interrupted ones count as left as they were, as do those never started.
    const unfinished = targets.length - (summary.renewed + unchanged + skipped + failed);
    log.error(
      `Stopped by ${stop.reason}: ${renewed.length} renewed responses are in place${
        renewed.length > 0 && config.onChange ? " (on_change runs with the next run)" : ""
      }, ${unfinished} certificates were left as they were; state saved`,
    );
    return { status: EXIT.failure, outcomes: results, totals };
  }
  log.info(summaryLine(summary));
  // What was left out of the config failed as surely as a certificate that did.
  const status = config.problems.length > 0 ? EXIT.failure : exitStatus(summary);
  return { status, outcomes: results, totals };
}

/**
 * On SIGTERM, SIGINT or SIGHUP the run winds down: children stop, pending
 * files go, what finished is saved. A second signal, or a wind-down longer
 * than STOP_GRACE_SECONDS, ends the process at once, still with 255: a
 * status of 1..251 would read as "that many renewed".
 */
function listenForStopSignals(
  output: Output,
  stop: AbortController,
  files: Files,
): () => void {
  const exitNow = (why: string) => {
    for (const file of files.temporary) {
      try {
        Deno.removeSync(file);
      } catch {
        // Gone already, or never made.
      }
    }
    output.say(output.stderr, `ERROR: ${why}; exiting at once`, PRIORITY.error);
    Deno.exit(EXIT.failure);
  };
  const listeners = STOP_SIGNALS.map((name) => {
    const listener = () => {
      if (stop.signal.aborted) exitNow(`${name} while stopping`);
      stop.abort(name);
      const timer = setTimeout(
        () => exitNow(`did not stop within ${STOP_GRACE_SECONDS} s of ${name}`),
        STOP_GRACE_SECONDS * 1000,
      );
      Deno.unrefTimer(timer);
    };
    Deno.addSignalListener(name, listener);
    return () => Deno.removeSignalListener(name, listener);
  });
  return () => listeners.forEach((remove) => remove());
}

/** Whether OCSPBOT_DEBUG asks for stack traces with unexpected errors. */
function debugging(world: Surroundings): boolean {
  return Boolean(world.env?.OCSPBOT_DEBUG);
}

/** One line for an error nobody planned for; the stack only when debugging. */
function unexpected(error: unknown, world: Surroundings): string {
  if (debugging(world) && error instanceof Error) return `Unexpected failure: ${error.stack}`;
  return `Unexpected failure: ${errorText(error)} (OCSPBOT_DEBUG=1 shows where)`;
}

/**
 * Says why the run could not go on: --check speaks Nagios (UNKNOWN, 3), and
 * with --json stdout still holds one document. Returns the exit status.
 */
function cannotGoOn(
  output: Output,
  log: Logger,
  invocation: Pick<Invocation, "mode" | "format">,
  message: string,
  status: number,
  now: Date,
): number {
  const exit = invocation.mode === "check" ? NAGIOS.unknown : status;
  if (invocation.mode === "check") log.result(`OCSP UNKNOWN - ${message}`);
  else log.error(message);
  const nothing = { status: exit, outcomes: [], totals: {} };
  REPORTERS[invocation.format].report(output, invocation.mode, nothing, now, message);
  return exit;
}

/** The message and exit status of an error that ends the run. */
function failureOf(error: unknown, world: Surroundings): { message: string; status: number } {
  if (error instanceof ExitError) return { message: error.message, status: error.status };
  if (error instanceof Interrupted) {
    return { message: `${errorText(error)}; nothing changed`, status: EXIT.failure };
  }
  return { message: unexpected(error, world), status: EXIT.failure };
}

/**
 * Runs the bot and returns the exit status: read the command line and the
 * config, take the lock, find the certificates, then check them or renew
 * them, and report. Output that could not be written is said where it can,
 * and never leaves a status that reads as renewals that did not happen.
 */
export async function main(
  args: string[],
  output = new Output(),
  world = surroundings(),
): Promise<number> {
  const { status, mode } = await workingIn(world.cwd, () => run(args, output, world));
  output.flush();
  // --check's statuses are Nagios', which output problems do not change.
  return mode === "check" ? status : output.exitStatus(status);
}

async function run(
  args: string[],
  output: Output,
  world: Surroundings,
): Promise<{ status: number; mode: Mode }> {
  const started = performance.now();
  let invocation: Invocation;
  try {
    invocation = parseCommandLine(args);
  } catch (error) {
    // Reported as the command line asked, as far as it could be read.
    const asked = error instanceof BadCommandLine
      ? error.invocation
      : { mode: "run" as const, format: "text" as const };
    if (REPORTERS[asked.format].ownsStdout) output.reserveStdout();
    const terminal = Logger.console(output, { quiet: false, format: asked.format });
    const { message, status } = failureOf(error, world);
    const exit = cannotGoOn(output, terminal, asked, message, status, new Date(world.clock()));
    if (asked.mode === "run" && REPORTERS[asked.format].showsUsage) {
      output.write(output.stderr, "\n" + HELP);
    }
    return { status: exit, mode: asked.mode };
  }
  const { mode } = invocation;
  return { status: await runParsed(invocation, output, started, world), mode };
}

/** A command line that parsed: help, version, or a run or --check from the right folder. */
async function runParsed(
  invocation: Invocation,
  output: Output,
  started: number,
  world: Surroundings,
): Promise<number> {
  if (REPORTERS[invocation.format].ownsStdout) output.reserveStdout();
  const terminal = Logger.console(output, { quiet: false, format: invocation.format });
  let now: Date;
  try {
    now = currentTime(world);
  } catch (error) {
    const { message, status } = failureOf(error, world);
    return cannotGoOn(output, terminal, invocation, message, status, new Date(world.clock()));
  }
  if (invocation.help || invocation.version) {
    output.write(output.stdout, invocation.help ? HELP : `ocspbot ${VERSION}\n`);
    return 0;
  }

  if (invocation.renewed.length === 0) {
    return await operate(invocation, output, now, started, world);
  }
  // A deploy hook runs in its ACME client's working directory (certbot's is /):
  // relative paths in the config start at the config's folder instead, where
  // the README's cron line runs the hourly run, so both keep the same files.
  const configPath = path.resolve(invocation.configPath);
  const renewed = invocation.renewed.map((given) => path.resolve(given));
  const folder = path.dirname(configPath);
  let entered = false;
  try {
    return await workingIn(folder, () => {
      entered = true;
      const hook = { ...invocation, configPath, renewed };
      return operate(hook, output, now, started, { ...world, cwd: folder });
    });
  } catch (error) {
    if (entered) throw error;
    const message =
      `Cannot work from the config's folder "${folder}", where a --renewed run resolves the config's relative paths: ${
        errorText(error)
      }`;
    return cannotGoOn(output, terminal, invocation, message, EXIT.configUnloadable, now);
  }
}

/** A run or --check of a command line that parsed: config, lock, certificates, report. */
async function operate(
  invocation: Invocation,
  output: Output,
  now: Date,
  started: number,
  world: Surroundings,
): Promise<number> {
  const { mode, format } = invocation;
  const terminal = Logger.console(output, { quiet: false, format });
  const options = { quiet: invocation.quiet, format };
  const warnings: string[] = [];
  if (fakeClock(world)) {
    // Left in root's environment, it would move every production run's clock unseen.
    warnings.push(
      `OCSPBOT_FAKE_NOW is set: this run's clock says ${now.toISOString()}, not the real time; unset it outside tests`,
    );
  }
  const files = new Files(world.cwd);
  let config: Config;
  let log: Logger;
  try {
    config = loadConfig(invocation.configPath, warnings, await loadYamlReader(), files);
    log = mode === "check"
      ? Logger.console(output, options)
      : Logger.open(output, config, now, { ...options, timeZone: world.env?.TZ }, warnings, files);
  } catch (error) {
    for (const warning of warnings) terminal.warn(warning);
    const { message, status } = failureOf(error, world);
    return cannotGoOn(output, terminal, invocation, message, status, now);
  }
  const stop = new AbortController();
  const stopListening = listenForStopSignals(output, stop, files);
  let lock: Deno.FsFile | undefined;
  try {
    for (const warning of warnings.splice(0)) log.warn(warning);
    sayWhereRelativePathsStart(config, invocation, log, files, world.cwd);
    if (invocation.renewed.length > 0) {
      // A hook naming what no certificate is in hears so at once, not after the hourly run's lock.
      renewedTargets(discoverTargets({ ...config, problems: [] }), invocation.renewed);
    }
    // --check changes nothing, so it needs no lock and never waits for one.
    if (mode === "run") {
      lock = await acquireLock(
        `${config.stateFile}.lock`,
        config.lockTimeoutSeconds,
        warnings,
        files,
        stop.signal,
      );
    }
    for (const warning of warnings.splice(0)) log.warn(warning);
    const state = State.load(config.stateFile, log, files, world.clock());
    let targets = selectTargets(discoverTargets(config, state, warnings), invocation.only);
    for (const warning of warnings.splice(0)) log.warn(warning);
    for (const problem of config.problems) log.error(problem);
    if (invocation.renewed.length > 0) targets = renewedTargets(targets, invocation.renewed);
    if (targets.length === 0) log.warn("No certificates found in the configuration");
    const context: RunContext = {
      config,
      now,
      world,
      started,
      log,
      state,
      files,
      stop: stop.signal,
      parsed: new Map(),
      // --check reports what is; forcing a renewal it will not make would skew that.
      forced: (invocation.force || invocation.renewed.length > 0) && mode === "run",
      forcedBy: invocation.force ? "--force" : "--renewed: a new certificate",
      keepOutcomes: REPORTERS[format].keepsOutcomes || config.metricsFile !== undefined,
      silentResponders: new Map(),
      renewedWaitSeconds: invocation.renewed.length > 0 ? invocation.renewedWaitSeconds : undefined,
    };
    const report = mode === "check"
      ? await runChecks(targets, context)
      : await runRenewals(targets, context);
    if (config.metricsFile) {
      const seconds = (performance.now() - started) / 1000;
      await writeMetrics(config.metricsFile, mode, report, seconds, context);
    }
    REPORTERS[format].report(output, mode, report, now);
    return report.status;
  } catch (error) {
    for (const warning of warnings.splice(0)) log.warn(warning);
    const { message, status } = failureOf(error, world);
    return cannotGoOn(output, log, invocation, message, status, now);
  } finally {
    stopListening();
    lock?.close();
    log.close();
  }
}

// ---------------------------------------------------------------- haproxy --
// Add-on: the new response handed to running HAProxies through their
// runtime API, and pushed again by every run until each has taken it.

/** HAProxy does not know the certificate of a response pushed to it. */
class NotLoaded extends Error {}

/**
 * Where an HAProxy runtime API listens, as HAProxy's own `stats socket`
 * writes it: a Unix socket path (`unix@` optional), or `ipv4@host:port`,
 * `ipv6@[address]:port` on the network.
 */
export function haproxyAddress(
  socket: string,
): { transport: "unix"; path: string } | { transport: "tcp"; hostname: string; port: number } {
  const network = /^ipv([46])@(\[([^\]]+)\]|[^:[\]]+):(\d+)$/.exec(socket);
  if (network) {
    const port = Number(network[4]);
    if (port < 1 || port > 65535) throw new Error(`names port ${port}, which no socket has`);
    return { transport: "tcp", hostname: network[3] ?? network[2], port };
  }
  if (/^ipv[46]@/.test(socket)) {
    throw new Error(`"${socket}" is not "ipv4@host:port" or "ipv6@[address]:port"`);
  }
  const path = socket.replace(/^unix@/, "");
  if (path === "") throw new Error("is empty");
  return { transport: "unix", path };
}

/**
 * `promise`, or a rejection once `signal` aborts: for what takes no signal
 * of its own. What arrives late is handed to `discard`.
 */
function beforeAbort<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  discard: (late: T) => void,
): Promise<T> {
  if (signal.aborted) {
    promise.then(discard, () => {});
    return Promise.reject(signal.reason);
  }
  return new Promise((resolve, reject) => {
    const abort = () => {
      promise.then(discard, () => {});
      reject(signal.reason);
    };
    signal.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
  });
}

/**
 * Hands a new response to a running HAProxy through its runtime API, so it
 * staples it without a reload; throws with HAProxy's answer on refusal.
 * `timeout` bounds the whole exchange, the connection included: a network
 * that drops the SYNs would otherwise hold the run (and its lock) for the
 * kernel's two minutes per socket.
 */
async function pushToHaproxy(
  socket: string,
  response: Uint8Array,
  timeoutSeconds: number,
  stop: AbortSignal,
): Promise<void> {
  const timeout = AbortSignal.timeout(timeoutSeconds * 1000);
  const signal = AbortSignal.any([timeout, stop]);
  const late = () => {
    if (stop.aborted) throw new Interrupted(stop);
    return timeout.aborted;
  };
  let connection: Deno.Conn;
  try {
    const address = haproxyAddress(socket);
    // Two calls, as Deno.connect's overloads each take one kind of address.
    connection = address.transport === "unix"
      ? await beforeAbort(Deno.connect(address), signal, (late) => late.close())
      : await Deno.connect({ ...address, signal });
  } catch (error) {
    if (late()) {
      throw new Error(
        `Cannot reach HAProxy's socket "${socket}": no connection within ${timeoutSeconds} s`,
      );
    }
    throw new Error(`Cannot reach HAProxy's socket "${socket}": ${errorText(error)}`);
  }
  // A silent HAProxy must not hang the run: closing the socket ends the read.
  const close = () => connection.close();
  signal.addEventListener("abort", close, { once: true });
  let answer = "";
  let cut = false;
  try {
    const request = encoder.encode(`set ssl ocsp-response ${response.toBase64()}\n`);
    for (let done = 0; done < request.length;) {
      done += await connection.write(request.subarray(done));
    }
    const streaming = new TextDecoder();
    const buffer = new Uint8Array(4096);
    // Its real answers are one line; a socket that floods must not fill the memory.
    for (let read, received = 0; (read = await connection.read(buffer)) !== null;) {
      received += read;
      if (received > SIZE_CAPS["HAProxy answer"]) {
        cut = true;
        break;
      }
      answer += streaming.decode(buffer.subarray(0, read), { stream: true });
    }
    answer += streaming.decode();
  } catch (error) {
    if (late()) {
      throw new Error(`HAProxy's socket "${socket}" did not answer within ${timeoutSeconds} s`);
    }
    throw new Error(
      `HAProxy's socket "${socket}" broke the connection before answering: ${errorText(error)}`,
    );
  } finally {
    signal.removeEventListener("abort", close);
    try {
      connection.close();
    } catch {
      // Closed by the timeout already.
    }
  }
  // HAProxy 2.6's words for a certificate it loaded no response for, or does not serve.
  if (/Certificate ID does not match any certificate/.test(answer)) {
    throw new NotLoaded(`HAProxy (socket "${socket}") does not know the certificate`);
  }
  if (!/^OCSP Response updated/m.test(answer)) {
    const shown = answer.trim();
    throw new Error(
      shown === ""
        ? `HAProxy's socket "${socket}" closed the connection without an answer`
        : `HAProxy (socket "${socket}") refused the new response: ${
          shown.length > 200 || cut ? `${shown.slice(0, 200).trim()}…` : shown
        }`,
    );
  }
}

/**
 * Hands a response to every HAProxy of the certificate, each whatever the
 * others did, and remembers those that did not take it: every run pushes the
 * stored response to them again until each does. One that loaded no
 * response for the certificate when it started (a first run) takes one only
 * by a reload, which on_change makes; the next run's push then succeeds.
 */
async function pushToEvery(
  target: Target,
  response: Uint8Array,
  context: RunContext,
  log: Logger,
  sockets = target.haproxySocket ?? [],
): Promise<{ pending?: PendingPush; refused: boolean }> {
  const { config, state, now } = context;
  const missed: string[] = [];
  const why: string[] = [];
  let refused = false;
  for (const socket of sockets) {
    try {
      await pushToHaproxy(socket, response, config.timeoutSeconds, context.stop);
      log.info(`Pushed the stored response to HAProxy (socket "${socket}")`);
      continue;
    } catch (error) {
      if (error instanceof Interrupted) throw error;
      missed.push(socket);
      why.push(errorText(error));
      if (!(error instanceof NotLoaded)) {
        refused = true;
        log.error(
          `${
            errorText(error)
          }; it keeps its old response, and every run pushes the stored one again until it takes it`,
        );
        continue;
      }
      log.warn(
        `${
          errorText(error)
        }: it loaded no response for this certificate when it started (or does not serve it), and takes one only by ${
          config.onChange ? "the reload on_change makes" : "a reload; set on_change to reload it"
        }; every run pushes the stored response again until it takes it (if it does not serve this certificate, give the certificate's entry a haproxy_socket without it)`,
      );
    }
  }
  const before = state.pendingPush(target.responsePath);
  const pending = missed.length === 0 ? undefined : {
    sockets: missed,
    since: before?.since ?? epochSeconds(now),
    message: why.join("; "),
  };
  state.setPendingPush(target.responsePath, pending);
  return { pending, refused };
}

/**
 * Pushes the stored response again to the HAProxies that missed it in an
 * earlier run (see PendingPush); the certificate fails while one still
 * cannot be reached or refuses it. Only the verified response stored is pushed: what is
 * read must be the bytes the state says were verified.
 */
async function pushPending(
  target: Target,
  facts: Facts,
  pending: PendingPush,
  outcome: Outcome,
  context: RunContext,
  log: Logger,
): Promise<Outcome> {
  const configured = new Set(target.haproxySocket ?? []);
  // A socket taken out of the config is no longer waited for.
  const sockets = pending.sockets.filter((socket) => configured.has(socket));
  if (sockets.length === 0 || !facts.stored?.verified || !facts.storedEntry) {
    context.state.setPendingPush(target.responsePath, undefined);
    return outcome;
  }
  const { bytes } = context.files.read(target.responsePath, "response", "trusted");
  // Changed since it was judged: the next run judges it, then pushes.
  if (sha256(bytes) !== entryHash(facts.storedEntry)) return outcome;
  log.info(
    `Pushing the stored response again to HAProxy (${
      sockets.map((socket) => `socket "${socket}"`).join(", ")
    }), which has not taken it since ${formatTime(new Date(pending.since * 1000))}`,
  );
  const { pending: still, refused } = await pushToEvery(target, bytes, context, log, sockets);
  // One that only does not know the certificate yet waits for a reload: a warning, not a failure.
  if (!still || !refused) return outcome;
  const error = `HAProxy has not taken the stored response since ${
    formatTime(new Date(still.since * 1000))
  }: ${still.message}`;
  return { ...outcome, action: "failed", error };
}

// ------------------------------------------------------------------ serve --
// Add-on: --check asks the server where a certificate is served what it
// staples (`serve`), and judges that against what is stored.

/** The STARTTLS protocols `openssl s_client -starttls` speaks, as `serve` names them. */
const STARTTLS = ["smtp", "imap", "pop3", "ftp", "xmpp", "ldap", "postgres", "mysql", "nntp"];

/** Where a certificate is served (`serve`): a TLS port, or a STARTTLS protocol's. */
export interface ServeAddress {
  host: string;
  port: number;
  /** `smtp`, `imap`, …: openssl's `-starttls`; undefined for TLS from the start. */
  starttls?: string;
  /** The SNI name to ask for; undefined: the certificate's first name. */
  servername?: string;
}

/**
 * Reads `serve`: `host:port` (TLS from the start, as `tls://host:port`), or
 * `<protocol>://host:port` for a STARTTLS protocol (`smtp://127.0.0.1:25`).
 */
export function serveAddress(text: string): ServeAddress {
  const match = /^(?:([a-z0-9]+):\/\/)?(\[[^\]]+\]|[^:/[\]]+):(\d+)\/?$/i.exec(text);
  if (!match) {
    throw new Error(
      `must be "host:port" or "<protocol>://host:port" (e.g. "127.0.0.1:443", "smtp://127.0.0.1:25"), not "${text}"`,
    );
  }
  const protocol = match[1]?.toLowerCase();
  if (protocol && protocol !== "tls" && protocol !== "https" && !STARTTLS.includes(protocol)) {
    throw new Error(
      `names "${protocol}://", which is neither tls:// nor one of ${STARTTLS.join(", ")}`,
    );
  }
  const port = Number(match[3]);
  if (port < 1 || port > 65535) throw new Error(`names port ${port}, which no server has`);
  const starttls = protocol && STARTTLS.includes(protocol) ? protocol : undefined;
  return { host: match[2].replace(/^\[|\]$/g, ""), port, ...(starttls ? { starttls } : {}) };
}

/** A ServeAddress as `serve` writes it, for messages. */
function serveText(address: ServeAddress): string {
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `${address.starttls ? `${address.starttls}://` : ""}${host}:${address.port}`;
}

/** What a server stapled in a handshake, as `openssl s_client -status` printed it. */
interface Stapled {
  status?: CertStatus;
  /** The serial of the certificate it is about, as openssl prints it (hex, upper case). */
  serial?: string;
  thisUpdate?: Date;
  nextUpdate?: Date;
}

/**
 * --check's verdict on what a server staples: ok (what is stored, or newer),
 * warning (older than stored: not reloaded; nothing stapled for a certificate
 * without Must-Staple; the server unreachable), critical (nothing for a
 * Must-Staple certificate, expired, not good, or for another certificate).
 */
interface Served {
  address: string;
  verdict: "ok" | "warning" | "critical";
  message: string;
  /** The server could not be asked: no connection, no handshake, or none in time. */
  unreached?: boolean;
  thisUpdate?: Date;
  nextUpdate?: Date;
}

/**
 * How long --check's handshakes with the servers of `serve` may take, all
 * together: under the 60 s a Nagios plugin is given by default.
 */
const CHECK_DEADLINE_SECONDS = 45;

/** How many certificates --check looks at at once when it asks servers. */
const PROBES_AT_ONCE = 16;

/**
 * Asks the server where a certificate is served what it staples, through
 * the run's Prober, with the certificate's first name as SNI unless `serve`
 * gives one, and judges it against what is stored.
 */
async function askServer(
  target: Target,
  address: ServeAddress,
  facts: Facts,
  context: RunContext,
  prober: Prober,
): Promise<Served> {
  const { leaf } = parsedFiles(target, context).bundle;
  const servername = address.servername ?? certificateName(leaf.x509);
  const heard = await prober.ask(address, servername, context);
  const serial = serialArgument(leaf.x509.raw).replace("0x", "");
  return servedVerdict(
    serveText(address),
    heard.stapled,
    heard.problem,
    { serial, mustStaple: facts.cert.mustStaple, presented: heard.presented },
    facts.stored,
    context.now,
  );
}

/** What a server said in one handshake: see servedVerdict(). */
interface Heard {
  stapled?: Stapled | "none";
  problem?: string;
  /** The serial of the certificate it presented, as servedVerdict compares them. */
  presented?: string;
}

/**
 * --check's handshakes with the servers of `serve`: many at once, each
 * address (host and port) asked by one handshake at a time and never again
 * in the run once it did not answer, the same question asked once, and
 * none started or left running past the deadline: a hung server costs one
 * `timeout`, not one per certificate, and --check ends within
 * CHECK_DEADLINE_SECONDS whatever the servers do.
 */
class Prober {
  #asked = new Map<string, Promise<Heard>>();
  #queues = new Map<string, Promise<unknown>>();
  #silent = new Map<string, string>();

  constructor(readonly deadline: number) {}

  ask(address: ServeAddress, servername: string | undefined, context: RunContext): Promise<Heard> {
    const where = serveText(address);
    const question = `${where} ${servername ?? ""}`;
    let heard = this.#asked.get(question);
    if (!heard) {
      // One handshake at a time per address: the second waits for the first's verdict.
      const before = this.#queues.get(where) ?? Promise.resolve();
      heard = before.then(() => this.#handshake(address, where, servername, context));
      this.#queues.set(where, heard.catch(() => {}));
      this.#asked.set(question, heard);
    }
    return heard;
  }

  async #handshake(
    address: ServeAddress,
    where: string,
    servername: string | undefined,
    context: RunContext,
  ): Promise<Heard> {
    const silent = this.#silent.get(where);
    if (silent) return { problem: `${silent}, earlier in this --check; not asked again` };
    const left = (this.deadline - performance.now()) / 1000;
    if (left <= 0.5) {
      return { problem: `not asked: --check's deadline of ${CHECK_DEADLINE_SECONDS} s had passed` };
    }
    const seconds = Math.min(context.config.timeoutSeconds, left);
    const args = [
      "s_client",
      "-connect",
      `${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`,
      "-status",
      ...(servername ? ["-servername", servername] : []),
      ...(address.starttls ? ["-starttls", address.starttls] : []),
    ];
    try {
      const { output, timedOut } = await runProcess(
        context.config.opensslExecutable,
        args,
        seconds,
        context,
      );
      const stdout = decoder.decode(output.stdout);
      const stapled = parseStapled(stdout);
      if (stapled) return { stapled, presented: presentedSerial(stdout) };
      const problem = timedOut
        ? seconds < context.config.timeoutSeconds
          ? `no handshake before --check's deadline of ${CHECK_DEADLINE_SECONDS} s`
          : `no handshake within ${seconds} s (config key "timeout")`
        : handshakeFailure(decoder.decode(output.stderr)) ||
          `openssl s_client exited with ${output.code}`;
      // No connection, or one that never finished a handshake: the next asks would wait as long.
      if (timedOut || !stdout.includes("CONNECTED(")) this.#silent.set(where, problem);
      return { problem };
    } catch (error) {
      if (error instanceof Interrupted) throw error;
      return { problem: errorText(error) };
    }
  }
}

/** Why `openssl s_client` got no handshake, in words: it says `write:errno=104` of a reset. */
function handshakeFailure(stderr: string): string {
  if (/errno=104\b/.test(stderr)) {
    return "the server reset the connection before a TLS handshake (is TLS served on that port?)";
  }
  if (/errno=111\b|Connection refused/.test(stderr)) return "the connection was refused";
  return summarizeOpensslErrors(stderr);
}

/**
 * The serial of the certificate the server presented, in servedVerdict's
 * form: the PEM after s_client's "Server certificate" line, not one of the
 * stapled response's signer certificates printed before it.
 */
function presentedSerial(stdout: string): string | undefined {
  const pem = /^Server certificate\n(-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----)/m
    .exec(stdout)?.[1];
  if (!pem) return undefined;
  try {
    const der = Uint8Array.fromBase64(pem.replace(/-----[A-Z ]+-----|\s/g, ""));
    return serialArgument(der).replace("0x", "");
  } catch {
    return undefined;
  }
}

/**
 * What `openssl s_client -status` says a server stapled: the response's
 * status, serial and dates; "none" when it stapled nothing; undefined when no
 * TLS session came about.
 */
export function parseStapled(stdout: string): Stapled | "none" | undefined {
  const block = /^OCSP response: ?(no response sent|\n=+\n([\s\S]*?)\n=+\n)/m.exec(stdout);
  if (!block) return undefined;
  if (block[1] === "no response sent") return "none";
  const text = block[2];
  const field = (name: string) => new RegExp(`^\\s*${name}: (.*)$`, "m").exec(text)?.[1].trim();
  const time = (name: string) => {
    const value = field(name);
    return value === undefined ? undefined : parseOpensslTime(value);
  };
  const status = field("Cert Status");
  return {
    status: status === "good" || status === "revoked" || status === "unknown" ? status : undefined,
    serial: field("Serial Number")?.toUpperCase(),
    thisUpdate: time("This Update"),
    nextUpdate: time("Next Update"),
  };
}

/**
 * --check's verdict on what a server staples for a certificate (`serve`),
 * against what is stored: see Served. `stapled` undefined with `problem`:
 * the server could not be reached or spoke no TLS.
 */
export function servedVerdict(
  address: string,
  stapled: Stapled | "none" | undefined,
  problem: string | undefined,
  cert: { serial: string; mustStaple: boolean; presented?: string },
  stored: ResponseReport | undefined,
  now: Date,
): Served {
  const say = (verdict: Served["verdict"], message: string): Served => ({
    address,
    verdict,
    message,
    ...(stapled && stapled !== "none"
      ? { thisUpdate: stapled.thisUpdate, nextUpdate: stapled.nextUpdate }
      : {}),
  });
  if (stapled === undefined) {
    return { ...say("warning", `cannot ask ${address}: ${problem}`), unreached: true };
  }
  const serial = (text: string) => text.toUpperCase().replace(/^(-?)(0X)?0*/, "$1");
  if (cert.presented !== undefined && serial(cert.presented) !== serial(cert.serial)) {
    // The stored response is right; the server was not reloaded since the certificate changed.
    const staple = stapled === "none"
      ? "staples nothing"
      : stapled.serial !== undefined && serial(stapled.serial) === serial(cert.presented) &&
          stapled.status === "good" && !judgeTimes(stapled, now).problem
      ? "staples a good response for it"
      : "staples no good response for it";
    const critical = staple !== "staples a good response for it" && cert.mustStaple;
    return say(
      critical ? "critical" : "warning",
      `${address} presents another certificate (serial ${cert.presented}, not the configured ${cert.serial}) and ${staple}: it was not reloaded since the certificate was replaced; reload the server`,
    );
  }
  if (stapled === "none") {
    return cert.mustStaple
      ? say("critical", `${address} staples nothing, and Must-Staple clients refuse the handshake`)
      : say("warning", `${address} staples nothing`);
  }
  if (serial(stapled.serial ?? "") !== serial(cert.serial)) {
    return say(
      "critical",
      `${address} staples a response for another certificate (serial ${stapled.serial}, not ${cert.serial}): a certificate replaced without its response; renew it (--renewed) and reload the server`,
    );
  }
  const judged = judgeTimes(stapled, now);
  if (judged.problem) {
    return say("critical", `${address} staples a response that ${judged.problem}`);
  }
  if (stapled.status !== "good") {
    return say("critical", `${address} staples a response that says "${stapled.status}"`);
  }
  const storedSince = stored?.verified ? stored.thisUpdate : undefined;
  if (storedSince && stapled.thisUpdate && stapled.thisUpdate.getTime() < storedSince.getTime()) {
    return say(
      "warning",
      `${address} staples an older response than the stored one (thisUpdate ${
        formatTime(stapled.thisUpdate)
      }, stored ${formatTime(storedSince)}): not reloaded since ${formatTime(stapled.thisUpdate)}`,
    );
  }
  return say("ok", `${address} staples the stored response, or a newer one`);
}

// ------------------------------------------------------------------ hooks --
// Add-ons around a renewal: the ACME client's deploy hook (--renewed), and
// on_change, run after renewals until it succeeds.

/** It asks ten times within the wait, at most every 10 s. */
const RENEWED_ASKS = 10;

const RENEWED_ASK_EVERY_MAX_SECONDS = 10;

/**
 * The keys whose value is a path relative to the working directory (the
 * Python bot's meaning): a run from another folder than the hourly one's
 * keeps other files.
 */
function relativeKeys(config: Config): string[] {
  const relative = (value: string | undefined) => value !== undefined && !path.isAbsolute(value);
  const keys = [
    ["ocsp_folder", config.ocspFolder],
    ["state_file", config.stateFile],
    ["output_log", config.outputLog],
    ["error_log", config.errorLog],
    ["metrics_file", config.metricsFile],
    ["backup_folder", config.backupFolder],
  ].filter(([, value]) => relative(value)).map(([key]) => key!);
  if (config.includes.some(relative)) keys.push("includes");
  if (config.domains.some((d) => [d.cert, d.chain, d.rootchain].some(relative))) {
    keys.push("domains");
  }
  if (config.scanKeys.some((scan) => relative(scan.folder))) keys.push("scan_keys");
  return keys;
}

/**
 * The certificates an ACME client just renewed: those whose file is one of
 * `renewed` or lies in one of those folders, by the path as given or with
 * every link resolved (certbot's live/ links into archive/). A path that
 * covers none is 252: a hook that renews nothing would pass unseen.
 */
function renewedTargets(targets: Target[], renewed: string[]): Target[] {
  const real = (file: string) => {
    try {
      return Deno.realPathSync(file);
    } catch {
      return path.resolve(file);
    }
  };
  // The certificate's folder resolved but not the file: certbot's cert.pem links into archive/.
  const names = (certPath: string) => [
    path.resolve(certPath),
    path.join(real(path.dirname(certPath)), path.basename(certPath)),
    real(certPath),
  ];
  const covers = (given: string, certPath: string) =>
    names(certPath).some((cert) =>
      [path.resolve(given), real(given)].some((place) => cert === place || isInside(cert, place))
    );
  const uncovered = renewed.filter((given) =>
    !targets.some((target) => covers(given, target.certPath))
  );
  if (uncovered.length > 0) {
    throw new ExitError(
      `--renewed names what no certificate of the config is in: ${
        uncovered.map((given) => `"${given}"`).join(", ")
      }; check the config's domains and scan_keys`,
      EXIT.badArguments,
    );
  }
  return targets.filter((target) => renewed.some((given) => covers(given, target.certPath)));
}

/**
 * Says where the config's relative paths start when a deploy hook's run
 * (which starts them at the config's folder) could keep other files than
 * this one: the hook then misses the hourly run's state, lock and staples.
 */
function sayWhereRelativePathsStart(
  config: Config,
  invocation: Invocation,
  log: Logger,
  files: Files,
  here: string,
): void {
  const keys = relativeKeys(config);
  if (keys.length === 0) return;
  const folder = path.dirname(path.resolve(config.file));
  const named = keys.map((key) => `"${key}"`).join(", ");
  if (invocation.renewed.length > 0) {
    if (files.entry(path.resolve(config.stateFile))) return;
    log.warn(
      `No state file "${
        path.resolve(config.stateFile)
      }": --renewed starts the relative paths of ${named} at the config's folder "${folder}"; if the hourly run starts elsewhere, run it from "${folder}" (cd there first) or make those paths absolute, or the hook keeps other files than it`,
    );
  } else if (here !== folder) {
    log.info(
      `Relative paths (${named}) start at the working directory "${here}"; a --renewed hook starts them at the config's folder "${folder}": cd there first, or make them absolute, so that both keep the same files`,
    );
  }
}

/** Runs `on_change` once, with the renewed ids in OCSPBOT_RENEWED. */
async function runOnChange(
  command: string[],
  renewed: string[],
  timeoutSeconds: number,
  context: Pick<RunContext, "stop" | "world">,
): Promise<void> {
  const shown = JSON.stringify(command);
  let run: { output: Deno.CommandOutput; timedOut: boolean };
  try {
    run = await runProcess(command[0], command.slice(1), timeoutSeconds, context, {
      env: { OCSPBOT_RENEWED: renewed.join(" ") },
    });
  } catch (error) {
    if (error instanceof Interrupted) throw error;
    throw new Error(`Cannot run on_change command ${shown}: ${errorText(error)}`);
  }
  if (run.timedOut) {
    throw new Error(`on_change command ${shown} did not finish within ${timeoutSeconds} s`);
  }
  const { output } = run;
  if (!output.success) {
    const stderr = decoder.decode(output.stderr).trim().split("\n").slice(-3);
    throw new Error(
      `on_change command ${shown} failed with exit status ${output.code}${
        stderr[0] ? `: ${stderr.join("; ")}` : ""
      }`,
    );
  }
}

/**
 * Runs on_change for this run's renewals and for those whose on_change
 * failed in an earlier run (the state remembers them), until it succeeds: a
 * reload that failed once (a PATH without /usr/sbin under cron, a server
 * briefly down) must not leave the server on the old staples for days.
 */
async function announceChanges(
  renewed: string[],
  summary: Summary,
  context: RunContext,
): Promise<void> {
  const { config, log, state, stop, now } = context;
  const pending = state.pendingChange;
  if (!config.onChange) {
    state.pendingChange = undefined;
    return;
  }
  const ids = [...new Set([...(pending?.ids ?? []), ...renewed])];
  if (ids.length === 0) return;
  if (stop.aborted) {
    const why = `the run was stopped by ${stop.reason} before on_change`;
    state.pendingChange = { ids, since: pending?.since ?? epochSeconds(now), message: why };
    return;
  }
  if (pending) {
    log.info(
      `Running on_change again for ${pending.ids.join(" ")}: it failed at ${
        formatTime(new Date(pending.since * 1000))
      } (${pending.message})`,
    );
  }
  try {
    await runOnChange(config.onChange, ids, config.timeoutSeconds, context);
    log.info(`Ran on_change ${JSON.stringify(config.onChange)} for ${ids.join(" ")}`);
    state.pendingChange = undefined;
  } catch (error) {
    if (error instanceof Interrupted) return;
    log.error(
      `${
        errorText(error)
      }; the renewed responses stay in place, and every run runs on_change again until it succeeds`,
    );
    state.pendingChange = {
      ids,
      since: pending?.since ?? epochSeconds(now),
      message: errorText(error),
    };
    summary.onChangeFailed = true;
  }
}

// ---------------------------------------------------------------- journal --
// Add-on: log lines carry sd-daemon priorities where systemd's journal
// reads the stream.

/** sd-daemon(3)'s priorities of the lines ocspbot logs. */
const PRIORITY = { error: 3, warning: 4, info: 6 } as const;

type Priority = (typeof PRIORITY)[keyof typeof PRIORITY];

/**
 * Whether the stream on file descriptor `fd` is the one systemd connected to
 * its journal: `JOURNAL_STREAM` names its device and inode (systemd.exec(5)).
 */
function isJournal(fd: number, stream: string | undefined): boolean {
  try {
    if (!stream) return false;
    const { dev, ino } = nodeFs().fstatSync(fd);
    return stream === `${dev}:${ino}`;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ start --
// The process: its surroundings, main(), and an exit status that never
// reads as renewals when something crashed.

if (import.meta.main) {
  const world = surroundings();
  const output = new Output(Deno, world.env?.JOURNAL_STREAM);
  // Deno ends an uncaught error with status 1, which would read as "1 renewed".
  const crash = (event: ErrorEvent | PromiseRejectionEvent) => {
    event.preventDefault();
    const error = "reason" in event ? event.reason : event.error;
    output.say(output.stderr, `ERROR: ${printable(unexpected(error, world))}`, PRIORITY.error);
    Deno.exit(EXIT.failure);
  };
  globalThis.addEventListener("error", crash);
  globalThis.addEventListener("unhandledrejection", crash);
  Deno.exit(await main(Deno.args, output, world));
}
