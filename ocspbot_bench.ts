// Copyright 2026 the ocspbot authors. MIT license.

/**
 * `deno task bench`: whole-process runs of ocspbot.ts, as cron starts it,
 * with the Install section's flags. It prints figures; it asserts nothing.
 *
 * - `--sizes 100,1000`: that many issued certificates, at parallel_threads 1
 *   and 8 and each `--latency`: the first run (every response fetched) beside
 *   its floor, the same number of bare `openssl ocsp` fetches with the bot's
 *   arguments at the same parallelism; and the second run (nothing due).
 * - `--large 10000,100000`: the hourly run with nothing due over that many
 *   copies of one certificate, its response and its state record (a first
 *   run of 100,000 would fetch for half an hour), in three layouts
 *   (`--layouts`): `copies`, a chain and rootchain copy per certificate;
 *   `shared`, one chain and one rootchain file for all (scan masks without
 *   `{domain}`); `linked`, per-certificate `-chain.pem`/`-rootchain.pem`
 *   links to one CA file (the Python bot's masks, linked). After one run
 *   that finds every file's stat changed and hashes them all (as after a
 *   restore from backup), `--rounds` rounds alternate, for each layout, the
 *   bot and its floor, testdata/bench_floor.ts (Deno start, read the state,
 *   stat each distinct file once, compare stamps), both with the Install
 *   section's flags; `--with-all` adds the bot with `-A`, which skips Deno's
 *   permission checks, `--with-default-heap` the bot without the V8 flag,
 *   and `--baseline FILE` another ocspbot.ts (a worktree of an older
 *   commit, say) with the same flags. Ratios are medians of the rounds' own
 *   ratios.
 *
 * Wall time, openssl processes per certificate (counted by a wrapper given
 * as openssl_executable) and peak memory (GNU time's maximum RSS).
 *
 * @module
 */

import * as path from "node:path";
import { parseArgs } from "node:util";
import { type LeafFiles, runBot, TestCa } from "./testdata/testca.ts";
import type { FloorLayout } from "./testdata/bench_floor.ts";

const BOT = path.join(import.meta.dirname!, "ocspbot.ts");
const FLOOR = path.join(import.meta.dirname!, "testdata", "bench_floor.ts");
/** The command line the README recommends, memory flag included. */
const README_FLAGS = [
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-env",
  "--v8-flags=--max-semi-space-size=1",
];
/**
 * Another way to run the bot, added to each round: `--with-all`,
 * `--with-default-heap`, or `--baseline FILE` (another ocspbot.ts, such as a
 * worktree of an older commit, with the Install flags).
 */
interface Variant {
  name: string;
  flags: string[];
  script: string;
}

const VARIANTS: Record<string, Variant> = {
  "with-all": { name: "with -A", flags: ["-A", "--v8-flags=--max-semi-space-size=1"], script: BOT },
  "with-default-heap": {
    name: "without the V8 flag",
    flags: README_FLAGS.filter((flag) => !flag.startsWith("--v8-flags")),
    script: BOT,
  },
};
const THREADS = [1, 8];

interface Measurement {
  wallSeconds: number;
  opensslCalls: number;
  peakMiB?: number;
  exitCode: number;
}

const hasGnuTime = await Deno.stat("/usr/bin/time").then(() => true, () => false);

/** Runs the bot (or `script` with `scriptArgs`) once in `site` and measures it from the outside. */
async function measureBot(
  site: string,
  countCalls: () => Promise<string[]>,
  flags = README_FLAGS,
  script = BOT,
  scriptArgs: string[] = [],
): Promise<Measurement> {
  const before = (await countCalls()).length;
  const memoryFile = path.join(site, "peak-rss");
  const command = [Deno.execPath(), "run", "--quiet", ...flags, script, ...scriptArgs];
  const [program, ...args] = hasGnuTime
    ? ["/usr/bin/time", "-f", "%M", "-o", memoryFile, ...command]
    : command;
  const started = performance.now();
  const { code } = await new Deno.Command(program, {
    args,
    cwd: site,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
  const wallSeconds = (performance.now() - started) / 1000;
  // GNU time puts "Command exited with non-zero status N" first: take the last line.
  const peakKiB = hasGnuTime
    ? Number((await Deno.readTextFile(memoryFile)).trim().split("\n").at(-1))
    : NaN;
  return {
    wallSeconds,
    opensslCalls: (await countCalls()).length - before,
    peakMiB: Number.isFinite(peakKiB) ? peakKiB / 1024 : undefined,
    exitCode: code,
  };
}

/**
 * The floor of a first run: one bare `openssl ocsp` fetch per certificate,
 * with the arguments the bot gives it, `threads` at a time, through the same
 * counting wrapper (a shell start each) the bot's calls go through.
 */
async function measureFloor(
  site: string,
  ca: TestCa,
  leaves: IssuedLeaf[],
  threads: number,
  openssl: string,
) {
  let next = 0;
  const certs = path.join(site, "certs");
  const started = performance.now();
  await Promise.all(Array.from({ length: threads }, async () => {
    while (next < leaves.length) {
      const { name, serial } = leaves[next++];
      const { success } = await new Deno.Command(openssl, {
        args: [
          "ocsp",
          "-url",
          ca.url,
          "-header",
          `Host=${new URL(ca.url).host}`,
          "-timeout",
          "30",
          "-respout",
          "-",
          "-no_nonce",
          "-issuer",
          path.join(certs, `${name}-chain.pem`),
          "-serial",
          serial,
          "-CAfile",
          path.join(certs, `${name}-rootchain.pem`),
          "-verify_other",
          path.join(certs, `${name}-chain.pem`),
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).output();
      if (!success) throw new Error(`the floor's openssl ocsp failed for ${name}`);
    }
  }));
  return (performance.now() - started) / 1000;
}

/** A config scanning `<site>/certs`; `entry`: more lines of its scan_keys entry. */
async function writeConfig(
  site: string,
  threads: number,
  opensslExecutable: string,
  entry = "",
) {
  await Deno.writeTextFile(
    path.join(site, "ocspbot.yaml"),
    `minimum_validity: 6h\nocsp_folder: responses\nparallel_threads: ${threads}\n` +
      `openssl_executable: ${opensslExecutable}\nscan_keys:\n  - folder: certs\n${entry}`,
  );
}

interface IssuedLeaf {
  name: string;
  serial: string;
}

/** Issues `count` leaves into `<site>/certs`, a few openssl processes at a time. */
async function issueLeaves(ca: TestCa, site: string, count: number): Promise<IssuedLeaf[]> {
  const names = Array.from({ length: count }, (_, i) => `host${String(i).padStart(6, "0")}.test`);
  const leaves: IssuedLeaf[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < count) {
      const name = names[next++];
      // LeafFiles.serial is hex without its 0x; openssl would read it as decimal.
      const { serial } = await ca.issueLeaf(path.join(site, "certs"), name);
      leaves.push({ name, serial: `0x${serial}` });
    }
  }));
  return leaves;
}

interface FirstRunRow {
  certificates: number;
  latencyMs: number;
  threads: number;
  run: "first" | "second";
  measurement: Measurement;
  floorSeconds: number;
}

/** First and second runs over `count` issued certificates. */
async function benchIssued(count: number, latencies: number[]): Promise<FirstRunRow[]> {
  const ca = await TestCa.create();
  ca.cacheAnswers = true;
  try {
    const site = path.join(ca.dir, "site");
    const leaves = await issueLeaves(ca, site, count);
    const wrapper = path.join(site, "openssl-counting");
    const countCalls = await TestCa.writeCountingOpenssl(wrapper);
    const responses = path.join(site, "responses");
    // Warm the responder's cache, so that no run below waits on its openssl.
    await writeConfig(site, 8, wrapper);
    await measureBot(site, countCalls);
    const rows: FirstRunRow[] = [];
    for (const threads of THREADS) {
      await writeConfig(site, threads, wrapper);
      for (const latencyMs of latencies) {
        ca.latencyMs = latencyMs;
        const floorSeconds = await measureFloor(site, ca, leaves, threads, wrapper);
        await Deno.remove(responses, { recursive: true });
        // The second run asks no responder: once is enough.
        for (
          const run of latencyMs === latencies[0]
            ? ["first", "second"] as const
            : ["first"] as const
        ) {
          const measurement = await measureBot(site, countCalls);
          rows.push({ certificates: count, latencyMs, threads, run, measurement, floorSeconds });
          console.error(
            `  ${count} × ${threads} threads, ${latencyMs} ms, ${run} run: ${
              measurement.wallSeconds.toFixed(2)
            } s (floor ${floorSeconds.toFixed(2)} s)`,
          );
        }
      }
    }
    return rows;
  } finally {
    await ca.close();
  }
}

/** How the chains of the `--large` certificates are laid out. */
type Layout = "copies" | "shared" | "linked";
const LAYOUTS: readonly Layout[] = ["copies", "shared", "linked"];

/** The masks of a layout's one scan_keys entry (folder `certs`), as the floor is told them too. */
function layoutMasks(layout: Layout): Omit<FloorLayout, "state" | "folder"> {
  const shared = layout === "shared";
  return {
    cert: "{domain}.pem",
    // A chain_mask without {domain} names one file for every certificate.
    chain: shared ? "../ca/chain.pem" : "{domain}-chain.pem",
    rootchain: shared ? "../ca/rootchain.pem" : "{domain}-rootchain.pem",
    ocsp: "{domain}.ocsp-resp",
  };
}

/** One certificate, the response the bot fetched for it and the state file it wrote. */
interface Seed {
  leaf: LeafFiles;
  response: Uint8Array;
  /** The state file's text, whose one record is copied per certificate. */
  state: string;
}

/** A certificate issued and its response fetched by the bot once: no responder is needed after. */
async function seedOriginal(ca: TestCa): Promise<Seed> {
  const original = path.join(ca.dir, "original");
  const leaf = await ca.issueLeaf(original, "original.test");
  await Deno.writeTextFile(
    path.join(original, "ocspbot.yaml"),
    "minimum_validity: 6h\nocsp_folder: responses\nscan_keys:\n  - folder: .\n",
  );
  const first = await runBot(original, [], {}, README_FLAGS);
  if (first.code !== 1) throw new Error(`seeding run failed: ${first.stderr}`);
  const response = await Deno.readFile(path.join(original, "responses", "original.test.ocsp-resp"));
  const state = await Deno.readTextFile(path.join(original, "responses", ".ocspbot-state.json"));
  return { leaf, response, state };
}

/**
 * The seed's state with its one record copied for each of `responsePaths`,
 * and no scans, as a state file at `file`. This follows the bot's state
 * format, as testdata/bench_floor.ts's readState() does: change both with it.
 */
function copiedState(seed: Seed, file: string, responsePaths: string[]): string {
  // A header line, then `<key>\t<record>` per response, keys relative to the state's folder.
  const [first, line] = seed.state.split("\n");
  const header = JSON.parse(first);
  if (header.version !== 3) {
    throw new Error(`the bench copies records of state version 3, not ${header.version}`);
  }
  const record = line.slice(line.indexOf("\t"));
  const folder = path.dirname(file);
  return [
    JSON.stringify({ ...header, scans: {} }),
    ...responsePaths.map((responsePath) => path.relative(folder, responsePath) + record),
  ].join("\n") + "\n";
}

/**
 * `count` copies of the seed's certificate in `<site>/certs`, with their
 * chains as `layout` says, copies of its response, the seed's state record
 * per certificate, and a config. Returns what the floor is told of it.
 */
async function buildLayout(
  seed: Seed,
  site: string,
  layout: Layout,
  count: number,
  opensslExecutable: string,
): Promise<FloorLayout> {
  const masks = layoutMasks(layout);
  const [certs, responses, ca] = ["certs", "responses", "ca"].map((dir) => path.join(site, dir));
  for (const dir of [certs, responses, ca]) await Deno.mkdir(dir, { recursive: true });
  const { leaf } = seed;
  // The one CA file that `shared` names and `linked` links to.
  Deno.copyFileSync(leaf.chain, path.join(ca, "chain.pem"));
  Deno.copyFileSync(leaf.rootchain, path.join(ca, "rootchain.pem"));
  const responsePaths: string[] = [];
  for (let index = 0; index < count; index++) {
    const name = `clone${String(index).padStart(6, "0")}.test`;
    Deno.copyFileSync(leaf.cert, path.join(certs, `${name}.pem`));
    const [chain, rootchain] = [`${name}-chain.pem`, `${name}-rootchain.pem`]
      .map((file) => path.join(certs, file));
    if (layout === "copies") {
      Deno.copyFileSync(leaf.chain, chain);
      Deno.copyFileSync(leaf.rootchain, rootchain);
    } else if (layout === "linked") {
      Deno.symlinkSync("../ca/chain.pem", chain);
      Deno.symlinkSync("../ca/rootchain.pem", rootchain);
    }
    const responsePath = path.join(responses, `${name}.ocsp-resp`);
    Deno.writeFileSync(responsePath, seed.response);
    responsePaths.push(responsePath);
  }
  const state = path.join(responses, ".ocspbot-state.json");
  await Deno.writeTextFile(state, copiedState(seed, state, responsePaths));
  await writeConfig(
    site,
    8,
    opensslExecutable,
    layout === "shared"
      ? `    chain_mask: ${masks.chain}\n    rootchain_mask: ${masks.rootchain}\n`
      : "",
  );
  return { state, folder: certs, ...masks };
}

/** What one round measured of one layout. */
interface Round {
  bot: Measurement;
  floor: Measurement;
  /** The bot run in each of the variants asked for, by name. */
  variants: Record<string, Measurement>;
}

interface LayoutRow {
  certificates: number;
  layout: Layout;
  /** The run that found every stat changed and hashed every file. */
  hashed: Measurement;
  /** In the order run; round i of every layout of a size ran together. */
  rounds: Round[];
}

/**
 * Nothing due over `count` certificates in each of `layouts`: each built
 * and hashed once, then `rounds` rounds, each running, layout by layout,
 * the bot, the floor and the bot in each of `variants`.
 */
async function benchLayouts(
  ca: TestCa,
  seed: Seed,
  count: number,
  layouts: Layout[],
  rounds: number,
  variants: Variant[],
): Promise<LayoutRow[]> {
  const sites = [];
  for (const layout of layouts) {
    const site = path.join(ca.dir, `${layout}-${count}`);
    const started = performance.now();
    const wrapper = path.join(site, "openssl-counting");
    await Deno.mkdir(site);
    const countCalls = await TestCa.writeCountingOpenssl(wrapper);
    const floor = await buildLayout(seed, site, layout, count, wrapper);
    sites.push({ layout, site, countCalls, floorArgs: [JSON.stringify(floor)] });
    console.error(`  ${count} ${layout}: set up in ${seconds(started)} s`);
  }
  try {
    // Files written in the last 2 s are not stamped (ctime has whole seconds).
    await new Promise((resolve) => setTimeout(resolve, 2100));
    const rows: LayoutRow[] = [];
    for (const { layout, site, countCalls } of sites) {
      const hashed = await measureBot(site, countCalls);
      rows.push({ certificates: count, layout, hashed, rounds: [] });
      console.error(
        `  ${count} ${layout}: every file hashed in ${
          hashed.wallSeconds.toFixed(2)
        } s, exit ${hashed.exitCode}`,
      );
    }
    for (let round = 1; round <= rounds; round++) {
      const started = performance.now();
      const walls: string[] = [];
      for (const [i, { site, countCalls, floorArgs }] of sites.entries()) {
        const bot = await measureBot(site, countCalls);
        const floor = await measureBot(site, countCalls, README_FLAGS, FLOOR, floorArgs);
        const measured: Round["variants"] = {};
        for (const variant of variants) {
          measured[variant.name] = await measureBot(
            site,
            countCalls,
            variant.flags,
            variant.script,
          );
        }
        rows[i].rounds.push({ bot, floor, variants: measured });
        walls.push(
          `${rows[i].layout} ${bot.wallSeconds.toFixed(2)}/${floor.wallSeconds.toFixed(2)}`,
        );
      }
      console.error(
        `  ${count} round ${round}/${rounds} in ${seconds(started)} s, bot/floor s: ${
          walls.join(", ")
        }`,
      );
    }
    return rows;
  } finally {
    for (const { site } of sites) await Deno.remove(site, { recursive: true });
  }
}

const seconds = (since: number) => ((performance.now() - since) / 1000).toFixed(1);

const median = (values: number[]) =>
  values.toSorted((a, b) => a - b)[Math.floor(values.length / 2)];

function firstRunTable(rows: FirstRunRow[]): string {
  const lines = rows.map((
    { certificates, latencyMs, threads, run, measurement: m, floorSeconds },
  ) =>
    `| ${certificates} | ${latencyMs} | ${threads} | ${run} | ${m.wallSeconds.toFixed(2)} | ${
      (certificates / m.wallSeconds).toFixed(0)
    } | ${(m.opensslCalls / certificates).toFixed(2)} | ${m.peakMiB?.toFixed(0) ?? "n/a"} | ${
      run === "first" ? floorSeconds.toFixed(2) : ""
    } | ${run === "first" ? (m.wallSeconds / floorSeconds).toFixed(2) : ""} | ${m.exitCode} |`
  );
  return [
    "| certificates | responder latency ms | threads | run | wall s | certs/s | openssl per cert | peak MiB | floor s (bare openssl ocsp) | wall / floor | exit |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
    ...lines,
  ].join("\n");
}

/** Per layout and size: medians of the bot and the floor, and of the rounds' own ratios. */
function layoutTable(rows: LayoutRow[]): string {
  const fixed = (value: number, digits: number) =>
    Number.isFinite(value) ? value.toFixed(digits) : "n/a";
  const lines = rows.map(({ certificates, layout, hashed, rounds }) => {
    const of = (pick: (round: Round) => number) => median(rounds.map(pick));
    const wall = (m: Measurement) => m.wallSeconds;
    const peak = (m: Measurement) => m.peakMiB ?? NaN;
    // The copies layout's bot in the same round.
    const copies = rows.find((row) => row.certificates === certificates && row.layout === "copies");
    const exits = (pick: (round: Round) => Measurement | undefined) =>
      [...new Set(rounds.map((round) => pick(round)?.exitCode).filter((code) => code !== 0))]
        .join(",");
    const calls = rounds.reduce((sum, round) => sum + round.bot.opensslCalls, 0);
    const checks = [
      exits((round) => round.bot) && `bot exit ${exits((round) => round.bot)}`,
      exits((round) => round.floor) && `floor exit ${exits((round) => round.floor)}`,
      ...Object.keys(rounds[0]?.variants ?? {}).map((variant) => {
        const codes = exits((round) => round.variants[variant]);
        return codes && `${variant}: exit ${codes}`;
      }),
      calls > 0 && `${calls} openssl calls`,
    ].filter(Boolean).join("; ") || "ok";
    return `| ${certificates} | ${layout} | ${rounds.length} | ${
      fixed(of((r) => wall(r.bot)), 2)
    } | ${fixed(of((r) => wall(r.floor)), 2)} | ${
      fixed(of((r) => wall(r.bot) / wall(r.floor)), 2)
    } | ${fixed(of((r) => peak(r.bot)), 0)} | ${fixed(of((r) => peak(r.floor)), 0)} | ${
      fixed(of((r) => peak(r.bot) / peak(r.floor)), 2)
    } | ${
      copies
        ? fixed(median(rounds.map((r, i) => wall(r.bot) / wall(copies.rounds[i].bot))), 2)
        : "n/a"
    } | ${hashed.wallSeconds.toFixed(2)} | ${checks} |`;
  });
  const variants = rows.flatMap(({ certificates, layout, rounds }) =>
    Object.keys(rounds[0]?.variants ?? {})
      .filter((variant) => rounds.every((round) => round.variants[variant]))
      .map((variant) => {
        const of = (pick: (round: Round) => number) => median(rounds.map(pick));
        const other = (round: Round) => round.variants[variant]!;
        return `${certificates} ${layout}: bot ${variant} / with the Install flags: wall ${
          fixed(of((r) => other(r).wallSeconds / r.bot.wallSeconds), 2)
        } (${fixed(of((r) => other(r).wallSeconds), 2)} s), peak RSS ${
          fixed(of((r) => (other(r).peakMiB ?? NaN) / (r.bot.peakMiB ?? NaN)), 2)
        } (${fixed(of((r) => other(r).peakMiB ?? NaN), 0)} MiB)`;
      })
  );
  return [
    "| certificates | layout | rounds | bot wall s | floor wall s | bot / floor wall | bot peak MiB | floor peak MiB | bot / floor RSS | bot wall / copies layout's | every file hashed s | checks |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ...lines,
    ...(variants.length > 0 ? ["", ...variants] : []),
  ].join("\n");
}

/** What the figures were measured on: the commit, and whether ocspbot.ts differs from it. */
async function revision(): Promise<string> {
  const git = async (...args: string[]) => {
    const { success, stdout } = await new Deno.Command("git", {
      args: ["-C", import.meta.dirname!, ...args],
      stdin: "null",
      stderr: "null",
    }).output();
    if (!success) throw new Error("git failed");
    return new TextDecoder().decode(stdout).trim();
  };
  try {
    const commit = await git("log", "-1", "--format=%h");
    const changed = await git("status", "--porcelain", "--", "ocspbot.ts");
    return `, ocspbot.ts at ${commit}${changed ? " with uncommitted changes" : ""}`;
  } catch {
    return "";
  }
}

/** The arguments as a shell would take them back. */
function shellWords(args: string[]): string {
  return args.map((arg) => /^[\w.,=/:@+-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`)
    .join(" ");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "100,1000" },
      latency: { type: "string", default: "0,50" },
      large: { type: "string", default: "" },
      layouts: { type: "string", default: LAYOUTS.join(",") },
      rounds: { type: "string", default: "7" },
      "with-all": { type: "boolean", default: false },
      "with-default-heap": { type: "boolean", default: false },
      baseline: { type: "string" },
    },
  });
  const numbers = (text: string) => text.split(",").filter(Boolean).map(Number);
  const layouts = values.layouts.split(",").filter(Boolean) as Layout[];
  const unknown = layouts.filter((layout) => !LAYOUTS.includes(layout));
  if (unknown.length > 0) throw new Error(`--layouts takes ${LAYOUTS.join(",")}, not ${unknown}`);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds takes a whole number");
  const variants = [
    ...(values["with-all"] ? [VARIANTS["with-all"]] : []),
    ...(values["with-default-heap"] ? [VARIANTS["with-default-heap"]] : []),
    ...(values.baseline
      ? [{ name: `baseline ${values.baseline}`, flags: README_FLAGS, script: values.baseline }]
      : []),
  ];
  const firstRuns: FirstRunRow[] = [];
  for (const size of numbers(values.sizes)) {
    console.error(`bench: ${size} certificates`);
    firstRuns.push(...await benchIssued(size, numbers(values.latency)));
  }
  const large: LayoutRow[] = [];
  if (numbers(values.large).length > 0) {
    const ca = await TestCa.create();
    try {
      const seed = await seedOriginal(ca);
      for (const size of numbers(values.large)) {
        console.error(`bench: ${size} copies of one certificate, nothing due`);
        large.push(...await benchLayouts(ca, seed, size, layouts, rounds, variants));
      }
    } finally {
      await ca.close();
    }
  }
  console.log(`$ deno task bench ${shellWords(Deno.args)}\n`);
  console.log(
    `ocspbot bench, ${navigator.hardwareConcurrency} cores, ${Deno.build.os}, Deno ${Deno.version.deno}${await revision()}\n`,
  );
  if (firstRuns.length > 0) console.log(firstRunTable(firstRuns) + "\n");
  if (large.length > 0) console.log(layoutTable(large));
}
