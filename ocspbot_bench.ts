// Copyright 2026 the ocspbot authors. MIT license.

/**
 * `deno task bench`: whole-process runs of ocspbot.ts against the local
 * responder, for N certificates (default 100 and 1000), at
 * parallel_threads 1 and 8: the first run (every response fetched) and the
 * second (nothing due). It prints wall time, certificates per second,
 * openssl processes per certificate (counted by a wrapper given as
 * openssl_executable) and peak memory (GNU time's maximum RSS), beside the
 * floor: N bare `openssl version` processes at the same parallelism.
 *
 * Options: `--sizes 100,1000` and `--large 10000` (one certificate copied
 * N times: the memory and scan figures at scale, second run at 8 threads).
 * It prints figures; it asserts nothing.
 *
 * @module
 */

import * as path from "node:path";
import { parseArgs } from "node:util";
import { discoverTargets, loadConfig, loadYamlReader } from "./ocspbot.ts";
import { TestCa } from "./testdata/testca.ts";

const BOT = path.join(import.meta.dirname!, "ocspbot.ts");
/** The command line the README recommends, memory flag included. */
const RUN_FLAGS = [
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-env",
  "--v8-flags=--max-semi-space-size=1",
];
const THREADS = [1, 8];

interface Measurement {
  wallSeconds: number;
  opensslCalls: number;
  peakMiB?: number;
  exitCode: number;
}

interface Row {
  certificates: number;
  latencyMs: number;
  threads: number;
  run: string;
  measurement: Measurement;
  floorSeconds: number;
}

const hasGnuTime = await Deno.stat("/usr/bin/time").then(() => true, () => false);

/** Runs the bot once in `site` and measures it from the outside. */
async function measureBot(site: string, countCalls: () => Promise<string[]>): Promise<Measurement> {
  const before = (await countCalls()).length;
  const memoryFile = path.join(site, "peak-rss");
  const command = [Deno.execPath(), "run", "--quiet", ...RUN_FLAGS, BOT];
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

/** N bare `openssl version` processes, `threads` at a time: the floor. */
async function measureFloor(count: number, threads: number): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: threads }, async () => {
    while (next++ < count) {
      await new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
        .output();
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
async function issueLeaves(ca: TestCa, site: string, count: number): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < count) {
      const index = next++;
      await ca.issueLeaf(path.join(site, "certs"), `host${String(index).padStart(5, "0")}.test`);
    }
  }));
}

/** Copies one issued leaf under `count` names: same bytes, many files. */
async function cloneLeaves(ca: TestCa, site: string, count: number): Promise<void> {
  const certs = path.join(site, "certs");
  const original = await ca.issueLeaf(path.join(site, "original"), "original.test");
  await Deno.mkdir(certs, { recursive: true });
  for (let index = 0; index < count; index++) {
    const name = `clone${String(index).padStart(5, "0")}.test`;
    await Deno.copyFile(original.cert, path.join(certs, `${name}.pem`));
    await Deno.copyFile(original.chain, path.join(certs, `${name}-chain.pem`));
    await Deno.copyFile(original.rootchain, path.join(certs, `${name}-rootchain.pem`));
  }
}

/** Times discoverTargets() in-process: the scan alone. */
async function measureScan(site: string): Promise<number> {
  const cwd = Deno.cwd();
  Deno.chdir(site);
  try {
    const config = loadConfig("ocspbot.yaml", [], await loadYamlReader());
    const started = performance.now();
    discoverTargets(config);
    return (performance.now() - started) / 1000;
  } finally {
    Deno.chdir(cwd);
  }
}

async function benchSize(
  count: number,
  latencies: number[],
  large: boolean,
): Promise<{ rows: Row[]; scanSeconds: number }> {
  const ca = await TestCa.create();
  ca.cacheAnswers = true;
  try {
    const site = path.join(ca.dir, "site");
    const setupStarted = performance.now();
    if (large) await cloneLeaves(ca, site, count);
    else await issueLeaves(ca, site, count);
    const wrapper = path.join(site, "openssl-counting");
    const countCalls = await TestCa.writeCountingOpenssl(wrapper);
    const responses = path.join(site, "responses");
    const rows: Row[] = [];
    // Warm the responder's cache, so no run below waits on its openssl;
    // copies of one certificate all ask the same question, cached at once.
    if (!large) {
      await writeConfig(site, 8, wrapper);
      await measureBot(site, countCalls);
    }
    const setup = (performance.now() - setupStarted) / 1000;
    console.error(`  ${count} certificates set up in ${setup.toFixed(1)} s`);

    for (const threads of large ? [8] : THREADS) {
      await writeConfig(site, threads, wrapper);
      await Deno.mkdir(responses, { recursive: true });
      const floorSeconds = await measureFloor(count, threads);
      for (const latencyMs of latencies) {
        ca.latencyMs = latencyMs;
        await Deno.remove(responses, { recursive: true });
        // The second run asks no responder: once is enough.
        for (const run of latencyMs === latencies[0] ? ["first", "second"] : ["first"]) {
          const measurement = await measureBot(site, countCalls);
          rows.push({ certificates: count, latencyMs, threads, run, measurement, floorSeconds });
          console.error(
            `  ${count} × ${threads} threads, ${latencyMs} ms latency, ${run} run: ${
              measurement.wallSeconds.toFixed(2)
            } s`,
          );
        }
      }
    }
    return { rows, scanSeconds: await measureScan(site) };
  } finally {
    await ca.close();
  }
}

function table(rows: Row[]): string {
  const header =
    "| certificates | responder latency ms | threads | run | wall s | certs/s | openssl per cert | peak MiB | floor s (N × openssl version) | wall / floor | exit |";
  const lines = rows.map((
    { certificates, latencyMs, threads, run, measurement: m, floorSeconds },
  ) =>
    `| ${certificates} | ${latencyMs} | ${threads} | ${run} | ${m.wallSeconds.toFixed(2)} | ${
      (certificates / m.wallSeconds).toFixed(0)
    } | ${(m.opensslCalls / certificates).toFixed(2)} | ${m.peakMiB?.toFixed(0) ?? "n/a"} | ${
      floorSeconds.toFixed(2)
    } | ${(m.wallSeconds / floorSeconds).toFixed(2)} | ${m.exitCode} |`
  );
  return [header, "|---|---|---|---|---|---|---|---|---|---|---|", ...lines].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "100,1000" },
      latency: { type: "string", default: "0,50" },
      large: { type: "string" },
    },
  });
  const numbers = (text: string) => text.split(",").map(Number).filter((n) => n >= 0);
  const sizes = numbers(values.sizes).filter((n) => n > 0);
  const latencies = numbers(values.latency);
  const rows: Row[] = [];
  const scans: string[] = [];
  for (const size of sizes) {
    console.error(`bench: ${size} certificates`);
    const result = await benchSize(size, latencies, false);
    rows.push(...result.rows);
    scans.push(`scan of ${size} certificate files: ${(result.scanSeconds * 1000).toFixed(0)} ms`);
  }
  if (values.large) {
    const size = Number(values.large);
    console.error(`bench: ${size} copies of one certificate`);
    const result = await benchSize(size, [0], true);
    rows.push(...result.rows.map((row) => ({ ...row, run: `${row.run} (copies)` })));
    scans.push(`scan of ${size} certificate files: ${(result.scanSeconds * 1000).toFixed(0)} ms`);
  }
  const throughput = (size: number, latencyMs: number, threads: number) => {
    const row = rows.find((r) =>
      r.certificates === size && r.latencyMs === latencyMs && r.threads === threads &&
      r.run === "first"
    );
    return row ? size / row.measurement.wallSeconds : NaN;
  };
  const floor = (size: number, threads: number) =>
    rows.find((r) => r.certificates === size && r.threads === threads)?.floorSeconds ?? NaN;
  console.log(`ocspbot bench, ${navigator.hardwareConcurrency} cores, ${Deno.build.os}\n`);
  console.log(table(rows));
  console.log();
  for (const size of sizes) {
    const floorGain = floor(size, 1) / floor(size, 8);
    for (const latencyMs of latencies) {
      const gain = throughput(size, latencyMs, 8) / throughput(size, latencyMs, 1);
      console.log(
        `${size} certificates, ${latencyMs} ms latency: first run at 8 threads = ${
          gain.toFixed(2)
        }x the 1-thread throughput (floor: ${floorGain.toFixed(2)}x)`,
      );
    }
  }
  for (const scan of scans) console.log(scan);
}
