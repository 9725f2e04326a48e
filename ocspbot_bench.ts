// Copyright 2026 the ocspbot authors. MIT license.

/**
 * `deno task bench`: whole-process runs of ocspbot.ts, as cron starts it,
 * with the Install section's flags. It prints figures; it asserts nothing.
 *
 * - `--sizes 100,1000`: that many issued certificates, at parallel_threads 1
 *   and 8 and each `--latency`: the first run (every response fetched) beside
 *   its floor, the same number of bare `openssl ocsp` fetches with the bot's
 *   arguments at the same parallelism; and the second run (nothing due).
 * - `--large 10000,100000`: one certificate copied that many times, its
 *   response and state record copied too (a first run of 100,000 would fetch
 *   for half an hour). Then the run that finds every file's stat changed and
 *   hashes them all (as after a restore from backup), and the hourly run
 *   with nothing due, alternately with the Install section's flags and with
 *   `-A`, which skips Deno's permission checks.
 *
 * Wall time, openssl processes per certificate (counted by a wrapper given
 * as openssl_executable) and peak memory (GNU time's maximum RSS).
 *
 * @module
 */

import * as path from "node:path";
import { parseArgs } from "node:util";
import { runBot, TestCa } from "./testdata/testca.ts";

const BOT = path.join(import.meta.dirname!, "ocspbot.ts");
/** The command line the README recommends, memory flag included. */
const README_FLAGS = [
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-env",
  "--v8-flags=--max-semi-space-size=1",
];
const ALL_FLAGS = ["-A", "--v8-flags=--max-semi-space-size=1"];
const THREADS = [1, 8];
/** Runs of each flag set in the paired comparison. */
const PAIRS = 5;

interface Measurement {
  wallSeconds: number;
  opensslCalls: number;
  peakMiB?: number;
  exitCode: number;
}

const hasGnuTime = await Deno.stat("/usr/bin/time").then(() => true, () => false);

/** Runs the bot once in `site` and measures it from the outside. */
async function measureBot(
  site: string,
  countCalls: () => Promise<string[]>,
  flags = README_FLAGS,
): Promise<Measurement> {
  const before = (await countCalls()).length;
  const memoryFile = path.join(site, "peak-rss");
  const command = [Deno.execPath(), "run", "--quiet", ...flags, BOT];
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
  names: string[],
  threads: number,
  openssl: string,
) {
  let next = 0;
  const certs = path.join(site, "certs");
  const started = performance.now();
  await Promise.all(Array.from({ length: threads }, async () => {
    while (next < names.length) {
      const name = names[next++];
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
          "-cert",
          path.join(certs, `${name}.pem`),
          "-CAfile",
          path.join(certs, `${name}-rootchain.pem`),
          "-VAfile",
          path.join(certs, `${name}-rootchain.pem`),
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

async function writeConfig(site: string, threads: number, opensslExecutable: string) {
  await Deno.writeTextFile(
    path.join(site, "ocspbot.yaml"),
    `minimum_validity: 6h\nocsp_folder: responses\nparallel_threads: ${threads}\n` +
      `openssl_executable: ${opensslExecutable}\nscan_keys:\n  - folder: certs\n`,
  );
}

/** Issues `count` leaves into `<site>/certs`, a few openssl processes at a time. */
async function issueLeaves(ca: TestCa, site: string, count: number): Promise<string[]> {
  const names = Array.from({ length: count }, (_, i) => `host${String(i).padStart(6, "0")}.test`);
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < count) await ca.issueLeaf(path.join(site, "certs"), names[next++]);
  }));
  return names;
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
    const names = await issueLeaves(ca, site, count);
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
        const floorSeconds = await measureFloor(site, ca, names, threads, wrapper);
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

interface LargeRow {
  certificates: number;
  run: string;
  measurement: Measurement;
}

/**
 * `count` copies of one certificate, with copies of its response and of
 * the state record the bot wrote for it: no responder is needed.
 */
async function seedCopies(ca: TestCa, site: string, count: number): Promise<void> {
  const original = path.join(site, "original");
  const leaf = await ca.issueLeaf(original, "original.test");
  await Deno.writeTextFile(
    path.join(original, "ocspbot.yaml"),
    "minimum_validity: 6h\nocsp_folder: responses\nscan_keys:\n  - folder: .\n",
  );
  const first = await runBot(original, [], {}, README_FLAGS);
  if (first.code !== 1) throw new Error(`seeding run failed: ${first.stderr}`);
  const response = await Deno.readFile(path.join(original, "responses", "original.test.ocsp-resp"));
  const state = JSON.parse(
    await Deno.readTextFile(path.join(original, "responses", ".ocspbot-state.json")),
  );
  const [record] = Object.values(state.responses);
  const certs = path.join(site, "certs");
  const responses = path.join(site, "responses");
  await Deno.mkdir(certs, { recursive: true });
  await Deno.mkdir(responses, { recursive: true });
  const records: Record<string, unknown> = {};
  for (let index = 0; index < count; index++) {
    const name = `clone${String(index).padStart(6, "0")}.test`;
    Deno.copyFileSync(leaf.cert, path.join(certs, `${name}.pem`));
    Deno.copyFileSync(leaf.chain, path.join(certs, `${name}-chain.pem`));
    Deno.copyFileSync(leaf.rootchain, path.join(certs, `${name}-rootchain.pem`));
    const responsePath = path.join(responses, `${name}.ocsp-resp`);
    Deno.writeFileSync(responsePath, response);
    records[responsePath] = record;
  }
  await Deno.writeTextFile(
    path.join(responses, ".ocspbot-state.json"),
    JSON.stringify({ ...state, responses: records }),
  );
}

/** Nothing due over `count` copies: every file hashed once, then stat alone, paired with -A. */
async function benchCopies(count: number): Promise<LargeRow[]> {
  const ca = await TestCa.create();
  try {
    const site = path.join(ca.dir, "site");
    const started = performance.now();
    await seedCopies(ca, site, count);
    const wrapper = path.join(site, "openssl-counting");
    const countCalls = await TestCa.writeCountingOpenssl(wrapper);
    await writeConfig(site, 8, wrapper);
    console.error(
      `  ${count} copies set up in ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
    // Files written in the last 2 s are not stamped (ctime has whole seconds).
    await new Promise((resolve) => setTimeout(resolve, 2100));
    const rows: LargeRow[] = [];
    const record = (run: string, measurement: Measurement) => {
      rows.push({ certificates: count, run, measurement });
      console.error(`  ${count} copies, ${run}: ${measurement.wallSeconds.toFixed(2)} s`);
    };
    record("nothing due, every file hashed", await measureBot(site, countCalls));
    for (let pair = 0; pair < PAIRS; pair++) {
      record("nothing due", await measureBot(site, countCalls));
      record("nothing due, -A", await measureBot(site, countCalls, ALL_FLAGS));
    }
    return rows;
  } finally {
    await ca.close();
  }
}

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

function largeTable(rows: LargeRow[]): string {
  const sizes = [...new Set(rows.map((row) => row.certificates))];
  const lines = sizes.flatMap((certificates) => {
    const of = (run: string) =>
      rows.filter((row) => row.certificates === certificates && row.run === run)
        .map((row) => row.measurement);
    return ["nothing due, every file hashed", "nothing due", "nothing due, -A"].map((run) => {
      const runs = of(run);
      const wall = median(runs.map((m) => m.wallSeconds));
      const peak = median(runs.map((m) => m.peakMiB ?? NaN));
      const calls = median(runs.map((m) => m.opensslCalls));
      return `| ${certificates} | ${run} | ${runs.length} | ${wall.toFixed(2)} | ${
        Math.min(...runs.map((m) => m.wallSeconds)).toFixed(2)
      }–${Math.max(...runs.map((m) => m.wallSeconds)).toFixed(2)} | ${
        peak.toFixed(0)
      } | ${calls} | ${runs.map((m) => m.exitCode).join(",")} |`;
    });
  });
  const ratios = sizes.map((certificates) => {
    const walls = (run: string) =>
      rows.filter((row) => row.certificates === certificates && row.run === run)
        .map((row) => row.measurement.wallSeconds);
    const [readme, all] = [walls("nothing due"), walls("nothing due, -A")];
    const paired = readme.map((wall, i) => wall / all[i]);
    return `${certificates} copies, nothing due: Install flags / -A = ${
      median(paired).toFixed(2)
    } (median of ${paired.length} pairs, ${Math.min(...paired).toFixed(2)}–${
      Math.max(...paired).toFixed(2)
    })`;
  });
  return [
    "| certificates (copies) | run | runs | median wall s | range s | median peak MiB | openssl calls | exit |",
    "|---|---|---|---|---|---|---|---|",
    ...lines,
    "",
    ...ratios,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "100,1000" },
      latency: { type: "string", default: "0,50" },
      large: { type: "string", default: "" },
    },
  });
  const numbers = (text: string) => text.split(",").filter(Boolean).map(Number);
  const firstRuns: FirstRunRow[] = [];
  for (const size of numbers(values.sizes)) {
    console.error(`bench: ${size} certificates`);
    firstRuns.push(...await benchIssued(size, numbers(values.latency)));
  }
  const large: LargeRow[] = [];
  for (const size of numbers(values.large)) {
    console.error(`bench: ${size} copies of one certificate`);
    large.push(...await benchCopies(size));
  }
  console.log(`ocspbot bench, ${navigator.hardwareConcurrency} cores, ${Deno.build.os}\n`);
  if (firstRuns.length > 0) console.log(firstRunTable(firstRuns) + "\n");
  if (large.length > 0) console.log(largeTable(large));
}
