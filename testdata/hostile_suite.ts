// Copyright 2026 the ocspbot authors. MIT license.

/**
 * ocspbot among hostile neighbours (issue 25): the bot runs as root, and
 * `nobody`, who owns a folder the bot reads or writes (as web-server users,
 * ACME clients and other teams' include files do), plants FIFOs, links,
 * folders, huge files and include files there, or swaps a folder for a link
 * while the bot works. Every run is bounded: killed with SIGKILL after
 * KILL_AFTER_MS or past MEMORY_KILL_KB of memory, and asserted to have ended
 * by itself well before. Needs root, to become `nobody` and to set
 * fs.protected_hardlinks, as CI has; `deno task test:machine`.
 *
 * @module
 */

import * as path from "node:path";
import { assert, assertEquals, assertMatch, assertNotEquals } from "./asserts.ts";
import {
  BASE_CONFIG,
  BOT,
  BOT_PERMISSIONS,
  type BotRun,
  response,
  type TestCa,
  withCa,
} from "./testca.ts";

const decoder = new TextDecoder();

/** BASE_CONFIG with a responder that fails fast. */
const CONFIG = BASE_CONFIG + "timeout: 2\nretries: 0\n";
const STATE = ".ocspbot-state.json";
const LOCK = ".ocspbot-state.json.lock";
/** A run still going after this is killed (SIGKILL, to its whole process group). */
const KILL_AFTER_MS = 25_000;
/** A run must have ended by itself within this. */
const FINISHED_WITHIN_MS = 20_000;
/** A run holding more than this is killed: reading /dev/zero must not take the machine down. */
const MEMORY_KILL_KB = 2_000_000;
/** What a run may hold at its peak when a huge file is planted: real files stay far below. */
const MEMORY_BOUND_KB = 400_000;

/** Runs a program that must succeed; returns its stdout. */
async function run(
  program: string,
  args: string[],
  cwd?: string,
  env?: Record<string, string>,
): Promise<string> {
  const output = await new Deno.Command(program, {
    args,
    cwd,
    stdin: "null",
    ...(env ? { env, clearEnv: true } : {}),
  }).output();
  if (!output.success) {
    throw new Error(`${program} ${args.join(" ")}: ${decoder.decode(output.stderr)}`);
  }
  return decoder.decode(output.stdout);
}

/** The setpriv words that make the rest of a command run as `nobody`, in no group but nogroup. */
const AS_NOBODY = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/**
 * The attacker's environment: this one without libfaketime, whose shared
 * semaphore (CI runs the suites under faketime) is root's and which nobody
 * may not open; the attacker needs no moved clock.
 */
function attackerEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(Deno.env.toObject())
      .filter(([name]) => name !== "LD_PRELOAD" && !name.startsWith("FAKETIME")),
  );
}

/** Runs a command as `nobody`, the attacker; it must succeed. */
function asNobody(args: string[], cwd?: string): Promise<string> {
  return run("setpriv", [...AS_NOBODY, ...args], cwd, attackerEnv());
}

/** Runs a shell script as `nobody`, with `args` as $1…; it must succeed. */
function shAsNobody(script: string, ...args: string[]): Promise<string> {
  return asNobody(["bash", "-c", script, "bash", ...args]);
}

/** Everything in a folder, hidden files too, sorted. */
function listing(folder: string): string[] {
  return [...Deno.readDirSync(folder)].map((entry) => entry.name).sort();
}

/** Every path under `folder`, links not followed, relative to it. */
function walk(folder: string, prefix = ""): string[] {
  const found: string[] = [];
  for (const entry of Deno.readDirSync(path.join(folder, prefix))) {
    const name = path.join(prefix, entry.name);
    found.push(name);
    if (entry.isDirectory) found.push(...walk(folder, name));
  }
  return found.sort();
}

/** Whether anything, even a dangling link, is at `file`. */
function exists(file: string): boolean {
  try {
    Deno.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

/** A bounded run of the bot: what it printed, how long it took, why it was killed if it was. */
interface Bounded extends BotRun {
  ms: number;
  killed?: "time" | "memory";
  /** The run's peak resident memory, as last sampled (VmHWM). */
  peakKb: number;
}

/** A run's status and output, for assertion messages. */
function show(bot: Bounded): string {
  return `status ${bot.code} after ${bot.ms} ms, peak ${bot.peakKb} kB${
    bot.killed ? `, killed (${bot.killed})` : ""
  }\n--- stdout\n${bot.stdout}--- stderr\n${bot.stderr}`;
}

/** stdout and stderr together. */
function printed(bot: BotRun): string {
  return bot.stdout + "\n" + bot.stderr;
}

/**
 * Fields of /proc/<pid>/status in kB, 0 when the process has gone; read by
 * cat, as Deno asks for --allow-all to read /proc itself.
 */
async function procKb(pid: number, fields: string[]): Promise<number[]> {
  const read = await new Deno.Command("cat", {
    args: [`/proc/${pid}/status`],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  const status = decoder.decode(read.stdout);
  return fields.map((field) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0)
  );
}

/**
 * Spawns the bot as root from `cwd` in a process group of its own (setsid),
 * through `wrap` (words that exec "$@"), and kills the whole group after
 * KILL_AFTER_MS or past MEMORY_KILL_KB.
 */
async function bounded(
  cwd: string,
  args: string[] = [],
  options: { env?: Record<string, string>; wrap?: string[] } = {},
): Promise<Bounded> {
  const started = Date.now();
  const child = new Deno.Command("setsid", {
    args: [
      ...(options.wrap ?? []),
      Deno.execPath(),
      "run",
      "--quiet",
      ...BOT_PERMISSIONS,
      BOT,
      ...args,
    ],
    cwd,
    env: { NO_COLOR: "1", ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let killed: Bounded["killed"];
  let peakKb = 0;
  const kill = (why: "time" | "memory") => {
    if (killed) return;
    killed = why;
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  };
  const timer = setTimeout(() => kill("time"), KILL_AFTER_MS);
  let ended = false;
  const sampling = (async () => {
    while (!ended) {
      const [hwm, rss] = await procKb(child.pid, ["VmHWM", "VmRSS"]);
      peakKb = Math.max(peakKb, hwm);
      if (rss > MEMORY_KILL_KB) kill("memory");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  try {
    const output = await child.output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
      ms: Date.now() - started,
      killed,
      peakKb,
    };
  } finally {
    clearTimeout(timer);
    ended = true;
    await sampling;
    // Whatever the bot left running in its group (an openssl) goes too.
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // No such group: all gone.
    }
  }
}

/** The run ended by itself, well before it would have been killed, and not with 137. */
function assertFinished(bot: Bounded, within = FINISHED_WITHIN_MS): void {
  assert(!bot.killed, `the run did not end by itself:\n${show(bot)}`);
  assert(bot.ms < within, `the run took ${bot.ms} ms, more than ${within}:\n${show(bot)}`);
  assert(bot.code !== 137, show(bot));
}

/** The run's status is `code`. */
function assertStatus(bot: Bounded, ...codes: number[]): void {
  assert(codes.includes(bot.code), `status ${bot.code}, not ${codes.join(" or ")}:\n${show(bot)}`);
}

/** Mode bits of `file`, not following a link. */
function modeOf(file: string): number {
  return Deno.lstatSync(file).mode! & 0o7777;
}

/** A file that is a regular file, not a link, FIFO or folder. */
function assertRegular(file: string, bot?: Bounded): void {
  const info = Deno.lstatSync(file);
  assert(
    info.isFile && !info.isSymlink,
    `"${file}" is no regular file${bot ? `:\n${show(bot)}` : ""}`,
  );
}

/** The response at `file` is a real one openssl reads. */
async function assertResponse(file: string, bot?: Bounded): Promise<void> {
  assert(exists(file), `no response at "${file}"${bot ? `:\n${show(bot)}` : ""}`);
  assertRegular(file, bot);
  await run("openssl", ["ocsp", "-respin", file, "-resp_text", "-noverify"]);
}

interface Site {
  site: string;
  /** `responses`, made and owned by nobody (65534:65534, 0755) unless asked otherwise. */
  responses: string;
}

/**
 * A site folder `<ca.dir>/<label>` as makeSite() makes one (leaves in
 * `certs/`, `ocspbot.yaml`), open to other users, with `responses` owned by
 * nobody unless `ownResponses` is false.
 */
async function newSite(
  ca: TestCa,
  label: string,
  names: string[],
  config: string,
  ownResponses = true,
): Promise<Site> {
  const site = path.join(ca.dir, label);
  await Deno.mkdir(site, { recursive: true });
  for (const name of names) await ca.issueLeaf(path.join(site, "certs"), name);
  await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), config);
  // The CA's temp folder would hide the site from other users.
  await run("chmod", ["-R", "a+rX", ca.dir]);
  const responses = path.join(site, "responses");
  if (ownResponses) await nobodyFolder(responses);
  return { site, responses };
}

/** A folder owned by nobody, 0755. */
async function nobodyFolder(folder: string): Promise<void> {
  await Deno.mkdir(folder, { recursive: true });
  await Deno.chown(folder, 65534, 65534);
  await Deno.chmod(folder, 0o755);
}

/** A folder only root may enter, 0700. */
async function rootOnlyFolder(folder: string): Promise<void> {
  await Deno.mkdir(folder, { recursive: true });
  await Deno.chown(folder, 0, 0);
  await Deno.chmod(folder, 0o700);
}

/** A file only root may read, 0600. */
async function rootOnlyFile(file: string, text: string): Promise<void> {
  await Deno.writeTextFile(file, text);
  await Deno.chown(file, 0, 0);
  await Deno.chmod(file, 0o600);
}

/** A file with `text` as nobody writes it: owned by nobody, 0644. */
async function nobodyFile(file: string, text: string): Promise<void> {
  await shAsNobody('umask 022; printf %s "$2" > "$1"', file, text);
}

/** A `domains:` config with one entry per name, its `ocsp` as `ocsp(name)`. */
function domainsConfig(names: string[], ocsp: (name: string) => string): string {
  return "minimum_validity: 6h\nocsp_folder: responses\ntimeout: 2\nretries: 0\ndomains:\n" +
    names.map((name) =>
      `  ${name}:\n    cert: certs/${name}.pem\n    chain: certs/${name}-chain.pem\n` +
      `    rootchain: certs/${name}-rootchain.pem\n    ocsp: ${ocsp(name)}\n`
    ).join("");
}

/** Waits until the wall clock's second has changed, so that two backups get two names. */
async function nextSecond(): Promise<void> {
  const second = Math.floor(Date.now() / 1000);
  while (Math.floor(Date.now() / 1000) === second) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A site with one certificate whose metrics_file is responses/metrics.prom. */
async function metricsSite(ca: TestCa): Promise<{ site: string; metrics: string }> {
  const metricsConfig = CONFIG + "metrics_file: responses/metrics.prom\n";
  const { site, responses } = await newSite(ca, "site", ["a.test"], metricsConfig);
  return { site, metrics: path.join(responses, "metrics.prom") };
}

/**
 * Two runs from `site`: the first renews the one certificate, the second has
 * nothing to do (no lock or state left broken); each ends by itself. `between`
 * checks what the first left. Returns the first.
 */
async function renewsThenRests(
  site: string,
  between: (first: Bounded) => void | Promise<void> = () => {},
): Promise<Bounded> {
  const first = await bounded(site);
  assertFinished(first);
  assertStatus(first, 1);
  await between(first);
  const second = await bounded(site);
  assertFinished(second);
  assertStatus(second, 0);
  return first;
}

Deno.test("before anything else: these tests run as root", async () => {
  const uid = (await run("id", ["-u"])).trim();
  assertEquals(uid, "0", "setpriv and sysctl need root: run deno task test:machine as root");
});

// ------------------------------------------------ hangs no signal ends --

Deno.test("a FIFO at the lock file: the run ends by itself, says so, renews, and leaves no lock held", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(ca, "site", ["a.test"], CONFIG);
    await asNobody(["mkfifo", path.join(responses, LOCK)]);
    await renewsThenRests(site, (first) => {
      assertMatch(
        printed(first),
        /lock file .*not a regular file.*(replaced|removed)/i,
        show(first),
      );
    });
  });
});

Deno.test("a FIFO at the state file: the run ends by itself, says so, renews, and writes a real state", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(ca, "site", ["a.test"], CONFIG);
    const state = path.join(responses, STATE);
    await asNobody(["mkfifo", state]);
    await renewsThenRests(site, (first) => {
      assertMatch(printed(first), /state file .*not a regular file/i, show(first));
      assertRegular(state, first);
    });
  });
});

Deno.test("a FIFO at metrics_file: the run ends by itself and writes the metrics as a file", async () => {
  await withCa(async (ca) => {
    const { site, metrics } = await metricsSite(ca);
    await asNobody(["mkfifo", metrics]);
    await renewsThenRests(site, async (first) => {
      assertRegular(metrics, first);
      assertMatch(await Deno.readTextFile(metrics), /ocspbot_/);
    });
  });
});

Deno.test("a FIFO at the stored response: the run ends by itself and replaces it by a response", async (t) => {
  await withCa(async (ca) => {
    await t.step("planted before the run", async () => {
      const { site } = await newSite(ca, "site", ["a.test"], CONFIG);
      const file = response(site, "a.test");
      await asNobody(["mkfifo", file]);
      const renewed = await bounded(site);
      assertFinished(renewed);
      assertStatus(renewed, 1);
      await assertResponse(file, renewed);
    });

    await t.step("swapped in while the runs read it", async () => {
      const { site, responses } = await newSite(ca, "site2", ["a.test"], CONFIG);
      const first = await bounded(site);
      assertStatus(first, 1);
      await asNobody(["mkfifo", path.join(responses, ".fifo")]);
      const runs: Bounded[] = [];
      await whileSwapping(responses, "a.test.ocsp-resp", ".fifo", "fifo", async () => {
        for (let i = 0; i < 15; i++) {
          const bot = await bounded(site);
          runs.push(bot);
          if (bot.killed) break;
        }
      });
      // Each run finds the response or the FIFO: fine, or replaced.
      for (const bot of runs) {
        assertFinished(bot);
        assertStatus(bot, 0, 1);
      }
    });
  });
});

// ------------------------------- reads of what the config did not mean --

Deno.test("metrics_file is not read through another user's link, nor trusted when theirs", async (t) => {
  await withCa(async (ca) => {
    const { site, metrics } = await metricsSite(ca);
    const assertMetricsFile = (bot: Bounded) => assertRegular(metrics, bot);

    await t.step(
      "a link to /dev/zero: the run ends by itself, the metrics a file again",
      async () => {
        await asNobody(["ln", "-s", "/dev/zero", metrics]);
        const renewed = await bounded(site);
        assertFinished(renewed);
        assertStatus(renewed, 1);
        assertMetricsFile(renewed);
      },
    );

    await t.step("a link to a root-only file: none of it copied, the file unchanged", async () => {
      const private_ = path.join(ca.dir, "private");
      await rootOnlyFolder(private_);
      const secret = path.join(private_, "secret");
      // One line of a name ocspbot does not write, one of a name it does.
      const text = 'ocspbot_run_secret{mode="check"} 424242\n' +
        'ocspbot_run_exit_status{mode="check"} 424242\n';
      await rootOnlyFile(secret, text);
      await Deno.remove(metrics, { recursive: true }).catch(() => {});
      await asNobody(["ln", "-s", secret, metrics]);
      const bot = await bounded(site);
      assertFinished(bot);
      assertMetricsFile(bot);
      const written = await Deno.readTextFile(metrics);
      assert(!written.includes("424242"), `the root-only file was copied:\n${written}`);
      assertEquals(await Deno.readTextFile(secret), text, "the root-only file changed");
      assertEquals(modeOf(secret), 0o600, "the root-only file's mode changed");
    });

    await t.step("a metrics file nobody planted: its lines are not carried over", async () => {
      await Deno.remove(metrics, { recursive: true }).catch(() => {});
      await nobodyFile(
        metrics,
        'ocspbot_run_planted{mode="check"} 777\nocspbot_run_exit_status{mode="check"} 777\n',
      );
      assertEquals([Deno.lstatSync(metrics).uid, modeOf(metrics)], [65534, 0o644]);
      const bot = await bounded(site);
      assertFinished(bot);
      assertMetricsFile(bot);
      const written = await Deno.readTextFile(metrics);
      assert(
        !written.includes("ocspbot_run_planted") && !written.includes('{mode="check"} 777'),
        `a planted line was kept:\n${written}`,
      );
    });
  });
});

Deno.test("an include that is a link to a root-only file: named, never quoted; the main config still renews", async (t) => {
  const variants: [string, string][] = [
    ["YAML", "SECRETLINE: hunter2\n"],
    ["not YAML", "root:$6$hunter2:19000:0:99999:7:::\n  bad: [\n"],
  ];
  await withCa(async (ca) => {
    for (const [index, [name, text]] of variants.entries()) {
      await t.step(`its content ${name}`, async () => {
        const { site } = await newSite(
          ca,
          `site${index}`,
          ["a.test"],
          CONFIG + "includes: [inc]\n",
        );
        const inc = path.join(site, "inc");
        await nobodyFolder(inc);
        const private_ = path.join(ca.dir, `private${index}`);
        await rootOnlyFolder(private_);
        await rootOnlyFile(path.join(private_, "secret.yaml"), text);
        await asNobody(["ln", "-s", path.join(private_, "secret.yaml"), path.join(inc, "x.yaml")]);
        const bot = await bounded(site);
        assertFinished(bot);
        assert(!printed(bot).includes("hunter2"), `the root-only file was quoted:\n${show(bot)}`);
        assertMatch(printed(bot), /inc\/x\.yaml/, show(bot));
        await assertResponse(response(site, "a.test"), bot);
        assertStatus(bot, 255);
      });
    }
  });
});

Deno.test("an include's scan_keys naming a root-only folder: no name in it is printed", async () => {
  await withCa(async (ca) => {
    const { site } = await newSite(ca, "site", ["a.test"], CONFIG + "includes: [inc]\n");
    const secret = path.join(ca.dir, "rootonly");
    await ca.issueLeaf(secret, "topsecret-name");
    await rootOnlyFolder(secret);
    await run("chmod", ["0600", ...listing(secret).map((name) => path.join(secret, name))]);
    const inc = path.join(site, "inc");
    await nobodyFolder(inc);
    await nobodyFile(path.join(inc, "y.yaml"), `scan_keys:\n  - folder: ${secret}\n`);
    const bot = await bounded(site);
    assertFinished(bot);
    assert(!printed(bot).includes("topsecret-name"), `a root-only name was printed:\n${show(bot)}`);
    assertStatus(bot, 255, 253);
    await assertResponse(response(site, "a.test"), bot);
  });
});

Deno.test("an include's scan_keys naming an open folder inside a root-only one: not listed either", async () => {
  await withCa(async (ca) => {
    const { site } = await newSite(ca, "site", ["a.test"], CONFIG + "includes: [inc]\n");
    // The folder itself is open (0755), but nobody may not pass the root-only folder above it.
    const secret = path.join(ca.dir, "rootonly", "sub");
    await ca.issueLeaf(secret, "topsecret-name");
    await rootOnlyFolder(path.join(ca.dir, "rootonly"));
    await Deno.chmod(secret, 0o755);
    const inc = path.join(site, "inc");
    await nobodyFolder(inc);
    await nobodyFile(path.join(inc, "y.yaml"), `scan_keys:\n  - folder: ${secret}\n`);
    const bot = await bounded(site);
    assertFinished(bot);
    assert(!printed(bot).includes("topsecret-name"), `a root-only name was printed:\n${show(bot)}`);
    assert(!exists(response(site, "topsecret-name")), "a response was written for it");
    assertStatus(bot, 255);
    await assertResponse(response(site, "a.test"), bot);
  });
});

Deno.test("a folder below one another user may change is refused, naming that parent", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(
      ca,
      "site",
      ["a.test"],
      domainsConfig(["a.test"], () => "sub/a.der"),
    );
    await asNobody(["mkdir", path.join(responses, "sub")]);
    const bot = await bounded(site);
    assertFinished(bot);
    assertStatus(bot, 255);
    assertMatch(
      bot.stderr,
      /"[^"]*\/responses" may be changed by uid 65534, its owner, who could swap "[^"]*\/responses\/sub" for a link/,
      show(bot),
    );
    assert(!exists(path.join(responses, "sub", "a.der")), "written below a folder nobody may swap");
  });
});

Deno.test("a folder at the lock file: moved aside, the run goes on", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(ca, "site", ["a.test"], CONFIG);
    await asNobody(["mkdir", "-p", path.join(responses, LOCK, "inside")]);
    await renewsThenRests(site, (first) => {
      assertMatch(
        printed(first),
        /lock file ".*" is a folder \(uid 65534\): moved aside/i,
        show(first),
      );
      assertRegular(path.join(responses, LOCK), first);
    });
  });
});

// -------------------------------------- writes where the config did not mean --

/**
 * The attacker's swapper, run by Deno as nobody: exchanges `<folder>/<a>` and
 * `<folder>/<b>` with renameat2(RENAME_EXCHANGE), as fast as it can, so that
 * one name is always there, until `stop` exists or 20 s have passed; then puts
 * them back. With "fifo", keeps a FIFO as one of the two.
 */
const SWAPPER = `
const [folder, a, b, stop, mode] = Deno.args;
const libc = Deno.dlopen("libc.so.6", {
  renameat2: { parameters: ["i32", "buffer", "i32", "buffer", "u32"], result: "i32" },
});
const name = (n) => new TextEncoder().encode(folder + "/" + n + "\\0");
const [A, B] = [name(a), name(b)];
const exchange = () => libc.symbols.renameat2(-100, A, -100, B, 2);
const isFifo = (n) => {
  try {
    const info = Deno.lstatSync(folder + "/" + n);
    return !info.isFile && !info.isDirectory && !info.isSymlink;
  } catch {
    return false;
  }
};
const end = Date.now() + 20_000;
for (let i = 0; Date.now() < end; i++) {
  exchange();
  if (i % 1000 !== 0) continue;
  try {
    Deno.lstatSync(stop);
    break;
  } catch {
    // Go on.
  }
  if (mode === "fifo" && !isFifo(a) && !isFifo(b)) {
    // The bot replaced the FIFO: plant another.
    try {
      Deno.removeSync(folder + "/" + b);
    } catch {
      // Gone already.
    }
    new Deno.Command("mkfifo", { args: [folder + "/" + b] }).outputSync();
  }
}
const first = Deno.lstatSync(folder + "/" + a);
if (mode === "fifo" ? !first.isFile : first.isSymlink) exchange();
libc.close();
`;

/**
 * Runs `fn` while nobody swaps `<folder>/<a>` and `<folder>/<b>` (see
 * SWAPPER), with a copy of Deno nobody may run; ends the swapper however `fn`
 * ends.
 */
async function whileSwapping(
  folder: string,
  a: string,
  b: string,
  mode: "link" | "fifo",
  fn: () => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ocspbot-swapper-" });
  const stop = path.join(dir, "stop");
  let swapper: Deno.ChildProcess | undefined;
  try {
    await Deno.chmod(dir, 0o755);
    const deno = path.join(dir, "deno");
    await Deno.copyFile(Deno.execPath(), deno);
    await Deno.chmod(deno, 0o755);
    await Deno.writeTextFile(path.join(dir, "swap.js"), SWAPPER);
    await Deno.mkdir(path.join(dir, "cache"));
    await Deno.chown(path.join(dir, "cache"), 65534, 65534);
    swapper = new Deno.Command("setpriv", {
      args: [
        ...AS_NOBODY,
        deno,
        "run",
        "--quiet",
        "--no-config",
        "--allow-read",
        "--allow-write",
        "--allow-ffi",
        "--allow-run",
        path.join(dir, "swap.js"),
        folder,
        a,
        b,
        stop,
        mode,
      ],
      cwd: dir,
      env: { ...attackerEnv(), DENO_DIR: path.join(dir, "cache"), HOME: dir, NO_COLOR: "1" },
      clearEnv: true,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // Let it start swapping before the first run.
    await new Promise((resolve) => setTimeout(resolve, 500));
    await fn();
  } finally {
    if (swapper) {
      await Deno.writeTextFile(stop, "");
      const timer = setTimeout(() => {
        try {
          swapper!.kill("SIGKILL");
        } catch {
          // Ended already.
        }
      }, 5_000);
      const ended = await swapper.output();
      clearTimeout(timer);
      const said = decoder.decode(ended.stderr);
      assert(ended.success, `the swapper failed (${ended.code}): ${said}`);
    }
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a folder on the way swapped for a link while the bot works: nothing written through it", async (t) => {
  await withCa(async (ca) => {
    await t.step(
      "the response's folder: no file in the link's target, no temporary file left",
      async () => {
        const { site, responses } = await newSite(
          ca,
          "site",
          ["a.test"],
          domainsConfig(["a.test"], () => "sub/a.der"),
        );
        await asNobody(["mkdir", path.join(responses, "sub")]);
        const victims = path.join(ca.dir, "victims");
        await rootOnlyFolder(victims);
        await asNobody(["ln", "-s", victims, path.join(responses, "sub.link")]);
        const runs: Bounded[] = [];
        await whileSwapping(responses, "sub", "sub.link", "link", async () => {
          for (let i = 0; i < 5; i++) runs.push(await bounded(site, ["--force"]));
        });
        const all = runs.map(show).join("\n");
        for (const bot of runs) assertFinished(bot);
        assertEquals(listing(victims), [], `root wrote through the link:\n${all}`);
        const left = walk(responses).filter((name) => /\.tmp$/.test(name));
        assertEquals(left, [], `temporary files were left behind:\n${all}`);
      },
    );

    await t.step(
      "the log's folder: the root-only file of the same name stays as it was",
      async () => {
        const { site } = await newSite(
          ca,
          "logsite",
          ["a.test"],
          CONFIG + "output_log: logs/sub/ocspbot.log\n",
        );
        const logs = path.join(site, "logs");
        await nobodyFolder(logs);
        await asNobody(["mkdir", path.join(logs, "sub")]);
        const victims = path.join(ca.dir, "logvictims");
        await rootOnlyFolder(victims);
        const precious = "root:precious:log\n";
        await rootOnlyFile(path.join(victims, "ocspbot.log"), precious);
        await asNobody(["ln", "-s", victims, path.join(logs, "sub.link")]);
        const runs: Bounded[] = [];
        await whileSwapping(logs, "sub", "sub.link", "link", async () => {
          runs.push(await bounded(site, ["--force"]));
          for (let i = 0; i < 7; i++) runs.push(await bounded(site));
        });
        const all = runs.map(show).join("\n");
        for (const bot of runs) assertFinished(bot);
        assertEquals(
          await Deno.readTextFile(path.join(victims, "ocspbot.log")),
          precious,
          `root appended to the file through the link:\n${all}`,
        );
        assertEquals(
          listing(victims),
          ["ocspbot.log"],
          `root made a file through the link:\n${all}`,
        );
      },
    );
  });
});

Deno.test("with fs.protected_hardlinks=0, nobody's hard link at output_log: the root-only file stays as it was", async () => {
  // By sysctl: Deno asks for --allow-all to write /proc/sys itself.
  const before = (await run("sysctl", ["-n", "fs.protected_hardlinks"])).trim();
  await run("sysctl", ["-w", "fs.protected_hardlinks=0"]);
  try {
    await withCa(async (ca) => {
      const { site } = await newSite(
        ca,
        "site",
        ["a.test"],
        CONFIG + "output_log: logs/ocspbot.log\n",
      );
      const logs = path.join(site, "logs");
      await nobodyFolder(logs);
      // On the site's filesystem, as a hard link needs.
      const victim = path.join(site, "root-only");
      const precious = "root:precious:content\n";
      await rootOnlyFile(victim, precious);
      const log = path.join(logs, "ocspbot.log");
      await asNobody(["ln", victim, log]);
      assertEquals(
        Deno.lstatSync(log).ino,
        Deno.lstatSync(victim).ino,
        "the hard link was not made",
      );
      const bot = await bounded(site);
      assertFinished(bot);
      assertEquals(
        await Deno.readTextFile(victim),
        precious,
        `root appended to the root-only file:\n${show(bot)}`,
      );
      const logged = await Deno.readTextFile(log);
      assertMatch(logged, /Stored new OCSP response|OCSP responses/, show(bot));
      assertMatch(printed(bot) + logged, /WARNING.*(output_log|ocspbot\.log)/, show(bot) + logged);
    });
  } finally {
    await run("sysctl", ["-w", `fs.protected_hardlinks=${before}`]);
  }
});

Deno.test('a scanned certificate named "...pem" with ocsp_mask "{domain}/ocsp.der": nothing written outside ocsp_folder', async () => {
  await withCa(async (ca) => {
    const config = "minimum_validity: 6h\nocsp_folder: responses\ntimeout: 2\nretries: 0\n" +
      'scan_keys:\n  - folder: certs\n    ocsp_mask: "{domain}/ocsp.der"\n';
    const { site } = await newSite(ca, "site", ["a.test"], config);
    await ca.issueLeaf(path.join(site, "certs"), "..");
    assert(exists(path.join(site, "certs", "...pem")));
    const siteBefore = listing(site);
    const parentBefore = listing(ca.dir);
    const bot = await bounded(site);
    assertFinished(bot);
    assert(
      !exists(path.join(site, "ocsp.der")),
      `a response was written in the site:\n${show(bot)}`,
    );
    assert(
      !exists(path.join(ca.dir, "ocsp.der")),
      `a response was written above it:\n${show(bot)}`,
    );
    assertEquals(listing(site), siteBefore, show(bot));
    assertEquals(listing(ca.dir), parentBefore, show(bot));
    assertMatch(printed(bot), /(WARNING|ERROR).*\.\.\.pem/, show(bot));
  });
});

Deno.test("an include's ocsp naming the bot's own state or lock file: refused, the lock untouched", async (t) => {
  await withCa(async (ca) => {
    for (const [index, name] of [STATE, LOCK].entries()) {
      await t.step(`ocsp: ${name}`, async () => {
        const { site, responses } = await newSite(ca, `site${index}`, ["a.test"], CONFIG);
        await ca.issueLeaf(path.join(site, "other"), "b.test");
        await run("chmod", ["-R", "a+rX", path.join(site, "other")]);
        const first = await bounded(site);
        assertStatus(first, 1);
        const inc = path.join(site, "inc");
        await nobodyFolder(inc);
        await nobodyFile(
          path.join(inc, "t.yaml"),
          "domains:\n  b.test:\n    cert: other/b.test.pem\n    chain: other/b.test-chain.pem\n" +
            `    rootchain: other/b.test-rootchain.pem\n    ocsp: ${name}\n`,
        );
        await Deno.writeTextFile(path.join(site, "ocspbot.yaml"), CONFIG + "includes: [inc]\n");
        const lock = path.join(responses, LOCK);
        const lockBefore = Deno.lstatSync(lock).ino;
        const stored = await Deno.readFile(response(site, "a.test"));
        const bot = await bounded(site, ["--force"]);
        assertFinished(bot);
        assertEquals(
          Deno.lstatSync(lock).ino,
          lockBefore,
          `the lock file was replaced:\n${show(bot)}`,
        );
        assertStatus(bot, 255, 253);
        assertNotEquals(
          await Deno.readFile(response(site, "a.test")),
          stored,
          `the main config's certificate was not renewed:\n${show(bot)}`,
        );
      });
    }
  });
});

Deno.test("the new response copies no setuid, setgid, sticky or world-write bit of a planted file", async (t) => {
  await withCa(async (ca) => {
    await t.step("nobody's 6777 file at the response", async () => {
      const { site } = await newSite(ca, "site", ["a.test"], CONFIG);
      const file = response(site, "a.test");
      await shAsNobody('printf x > "$1" && chmod 6777 "$1"', file);
      assertEquals(modeOf(file), 0o6777, "the planted file is not 6777");
      const bot = await bounded(site);
      assertFinished(bot);
      await assertResponse(file, bot);
      assertEquals(modeOf(file) & 0o7002, 0, `mode ${modeOf(file).toString(8)}:\n${show(bot)}`);
    });

    await t.step("a hard link to a setuid-root file at the response", async () => {
      const { site } = await newSite(ca, "site2", ["a.test"], CONFIG);
      const file = response(site, "a.test");
      const setuid = path.join(site, "setuid-true");
      await Deno.copyFile("/usr/bin/true", setuid);
      await Deno.chmod(setuid, 0o4755);
      const before = Deno.lstatSync(setuid);
      await Deno.link(setuid, file);
      const bot = await bounded(site);
      assertFinished(bot);
      await assertResponse(file, bot);
      assertEquals(modeOf(file) & 0o4000, 0, `mode ${modeOf(file).toString(8)}:\n${show(bot)}`);
      const after = Deno.lstatSync(setuid);
      assertEquals([after.size, after.mode], [before.size, before.mode], "the setuid file changed");
    });
  });
});

Deno.test("under umask 000: folders 0755, the response 0644, the state and the lock 0600", async () => {
  await withCa(async (ca) => {
    const { site } = await newSite(
      ca,
      "site",
      ["a.test"],
      CONFIG.replace("ocsp_folder: responses", "ocsp_folder: responses/new/deeper"),
      false,
    );
    const bot = await bounded(site, [], { wrap: ["bash", "-c", 'umask 000; exec "$@"', "bash"] });
    assertFinished(bot);
    assertStatus(bot, 1);
    const at = (name: string) => path.join(site, "responses", name);
    const modes = (names: string[]) => names.map((name) => [name, modeOf(at(name)) & 0o777]);
    const folders = ["", "new", "new/deeper"];
    const files = ["new/deeper/a.test.ocsp-resp", `new/deeper/${STATE}`, `new/deeper/${LOCK}`];
    assertEquals(
      modes([...folders, ...files]),
      [
        ...folders.map((name) => [name, 0o755]),
        [files[0], 0o644],
        [files[1], 0o600],
        [files[2], 0o600],
      ],
      show(bot),
    );
  });
});

// ---------------------------------------------------- memory without bound --

Deno.test("huge files are refused by size, in bounded memory", async (t) => {
  await withCa(async (ca) => {
    await t.step(
      "a 256 MiB certificate beside a good one: named, the good one renewed",
      async () => {
        const { site } = await newSite(ca, "site", ["a.test"], CONFIG);
        const certs = path.join(site, "certs");
        await Deno.copyFile(
          path.join(certs, "a.test-chain.pem"),
          path.join(certs, "big.test-chain.pem"),
        );
        await Deno.copyFile(
          path.join(certs, "a.test-rootchain.pem"),
          path.join(certs, "big.test-rootchain.pem"),
        );
        await run("truncate", ["-s", "256M", path.join(certs, "big.test.pem")]);
        const bot = await bounded(site);
        assertFinished(bot);
        await assertResponse(response(site, "a.test"), bot);
        assertMatch(
          printed(bot),
          /big\.test\.pem.*larger than|larger than.*big\.test\.pem/,
          show(bot),
        );
        assertStatus(bot, 255);
        assert(bot.peakKb < MEMORY_BOUND_KB, `the run held ${bot.peakKb} kB:\n${show(bot)}`);
      },
    );

    await t.step("a 512 MiB stored response: replaced", async () => {
      const { site } = await newSite(ca, "site2", ["a.test"], CONFIG);
      const file = response(site, "a.test");
      await run("truncate", ["-s", "512M", file]);
      const bot = await bounded(site);
      assertFinished(bot);
      assertStatus(bot, 1);
      await assertResponse(file, bot);
      assert(bot.peakKb < MEMORY_BOUND_KB, `the run held ${bot.peakKb} kB:\n${show(bot)}`);
    });

    await t.step("a 512 MiB state file: warned about, the run goes on", async () => {
      const { site, responses } = await newSite(ca, "site3", ["a.test"], CONFIG);
      await run("truncate", ["-s", "512M", path.join(responses, STATE)]);
      const bot = await bounded(site);
      assertFinished(bot);
      assertStatus(bot, 1);
      assertMatch(printed(bot), /WARNING.*state file/i, show(bot));
      assert(bot.peakKb < MEMORY_BOUND_KB, `the run held ${bot.peakKb} kB:\n${show(bot)}`);
    });

    await t.step("/dev/zero as the config: 254 at once", async () => {
      const { site } = await newSite(ca, "site4", ["a.test"], CONFIG);
      const bot = await bounded(site, ["/dev/zero"]);
      assertFinished(bot, 10_000);
      assertStatus(bot, 254);
      assertMatch(
        bot.stderr,
        /\/dev\/zero.*not a regular file|not a regular file.*\/dev\/zero/,
        show(bot),
      );
    });
  });
});

// ------------------------------------------ trust in what others can forge --

/** A file's stamp as ocspbot 74e2062 keeps it in the state (fileStamp()). */
function oldStamp(info: Deno.FileInfo): string {
  return [
    info.size,
    info.mtime!.getTime(),
    Math.floor(info.ctime!.getTime() / 1000),
    info.ino!,
    info.dev,
  ]
    .map((number) => number.toString(36)).join(".");
}

Deno.test("a state file another user owns is not trusted: the forged staple is renewed", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(ca, "site", ["a.test"], CONFIG);
    const file = response(site, "a.test");
    const state = path.join(responses, STATE);
    const first = await bounded(site);
    assertStatus(first, 1);
    // The folder's owner replaces the staple by garbage…
    const garbage = path.join(responses, ".garbage");
    await nobodyFile(garbage, "this is no OCSP response at all");
    await asNobody(["mv", "-f", garbage, file]);
    // …and writes the state file anew, every line kept; the response's record gets the garbage's
    // stamp as 74e2062 computes it, so that a bot trusting the state believes the garbage.
    const stamp = oldStamp(Deno.lstatSync(file));
    const lines = (await Deno.readTextFile(state)).split("\n").map((line) => {
      const fields = line.split("\t");
      if (fields[0] !== "a.test.ocsp-resp" || fields.length < 2) return line;
      const words = fields[1].split(" ");
      words[0] = words[0].replace(/^[^/]*\//, `${stamp}/`);
      return [fields[0], words.join(" "), ...fields.slice(2)].join("\t");
    });
    const forged = path.join(responses, ".forged");
    await Deno.writeTextFile(forged, lines.join("\n"));
    await Deno.chown(forged, 65534, 65534);
    await Deno.chmod(forged, 0o644);
    await asNobody(["mv", "-f", forged, state]);
    assertEquals(Deno.lstatSync(state).uid, 65534);
    // A stamp is only given to a file that has not changed for 2 s.
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    const renewed = await bounded(site);
    assertFinished(renewed);
    assertMatch(printed(renewed), /state file .*owned by uid 65534/i, show(renewed));
    assertStatus(renewed, 1);
    await assertResponse(file, renewed);
    const check = await bounded(site, ["--check"]);
    assertFinished(check);
    assertStatus(check, 0);
  });
});

Deno.test("the lock and the state are 0600: nobody cannot take the lock", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(ca, "site", ["a.test"], CONFIG, false);
    const bot = await bounded(site);
    assertFinished(bot);
    assertStatus(bot, 1);
    const lock = path.join(responses, LOCK);
    assertEquals(
      [modeOf(lock) & 0o777, modeOf(path.join(responses, STATE)) & 0o777],
      [0o600, 0o600],
      "modes of the lock and the state",
    );
    // nobody can flock a lock it may read (0644, as locks were), so the refusal below is the mode's.
    const readable = path.join(responses, "readable.lock");
    await Deno.writeTextFile(readable, "");
    await Deno.chmod(readable, 0o644);
    await asNobody(["flock", "-n", readable, "true"]);
    const flock = await new Deno.Command("setpriv", {
      args: [...AS_NOBODY, "flock", "-n", lock, "true"],
      env: attackerEnv(),
      clearEnv: true,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    assert(!flock.success, "nobody could take the lock");
  });
});

// ------------------------------------------- one planted thing stops one thing --

Deno.test("a planted object at a domains response path fails only that certificate", async (t) => {
  await withCa(async (ca) => {
    await t.step("a FIFO: replaced by a response", async () => {
      const { site, responses } = await newSite(
        ca,
        "site",
        ["a.test"],
        domainsConfig(["a.test"], () => "a.der"),
      );
      await asNobody(["mkfifo", path.join(responses, "a.der")]);
      const bot = await bounded(site);
      assertFinished(bot);
      assertStatus(bot, 1);
      await assertResponse(path.join(responses, "a.der"), bot);
    });

    await t.step("a non-empty folder: the other certificate renewed, the path named", async () => {
      const { site, responses } = await newSite(
        ca,
        "site2",
        ["a.test", "b.test"],
        domainsConfig(["a.test", "b.test"], (name) => `${name[0]}.der`),
      );
      await asNobody(["mkdir", "-p", path.join(responses, "b.der", "inside")]);
      const bot = await bounded(site);
      assertFinished(bot);
      await assertResponse(path.join(responses, "a.der"), bot);
      assertMatch(bot.stderr, /ERROR.*b\.der/, show(bot));
      assertStatus(bot, 255);
    });
  });
});

Deno.test("a dangling link named like a backup: renewals go on, keep_backups holds", async () => {
  await withCa(async (ca) => {
    const { site, responses } = await newSite(
      ca,
      "site",
      ["a.test"],
      CONFIG + "make_backups: true\nkeep_backups: 2\n",
    );
    await asNobody([
      "ln",
      "-s",
      "/nonexistent",
      path.join(responses, "a.test.ocsp-resp-20200101-000000"),
    ]);
    const runs: Bounded[] = [];
    for (let i = 0; i < 3; i++) {
      if (i > 0) await nextSecond();
      const bot = await bounded(site, ["--force"]);
      runs.push(bot);
      assertFinished(bot);
      assertStatus(bot, 1);
    }
    const backups = listing(responses).filter((name) =>
      /^a\.test\.ocsp-resp-\d{8}-\d{6}$/.test(name) &&
      !Deno.lstatSync(path.join(responses, name)).isSymlink
    );
    assert(backups.length <= 2, `${backups.join(", ")}:\n${runs.map(show).join("\n")}`);
  });
});

Deno.test("a non-empty folder at the .rejected or .new name does not change what a renewal reports", async (t) => {
  await withCa(async (ca) => {
    await t.step(".rejected, with a wrong signer: the error is the signer's", async () => {
      const { site, responses } = await newSite(ca, "site", ["a.test"], CONFIG);
      await asNobody(["mkdir", "-p", path.join(responses, ".a.test.ocsp-resp.rejected", "inside")]);
      ca.mode = "wrong-signer";
      let bot: Bounded;
      try {
        bot = await bounded(site);
      } finally {
        ca.mode = "good";
      }
      assertFinished(bot);
      assertStatus(bot, 255);
      const errors = bot.stderr.split("\n").filter((line) => /ERROR/.test(line));
      assert(errors.some((line) => /verif|signe/i.test(line)), show(bot));
      assert(!errors.some((line) => /Directory not empty/.test(line)), show(bot));
    });

    await t.step(".rejected, with a good responder: the renewal succeeds", async () => {
      const { site, responses } = await newSite(ca, "site3", ["a.test"], CONFIG);
      await asNobody(["mkdir", "-p", path.join(responses, ".a.test.ocsp-resp.rejected", "inside")]);
      const bot = await bounded(site, ["--force"]);
      assertFinished(bot);
      assertStatus(bot, 1);
      await assertResponse(response(site, "a.test"), bot);
      assert(!/ERROR.*\.rejected/.test(printed(bot)), show(bot));
    });

    await t.step(".new: a forced renewal succeeds, the folder at most a warning", async () => {
      const { site, responses } = await newSite(ca, "site2", ["a.test"], CONFIG);
      await asNobody(["mkdir", "-p", path.join(responses, "a.test.ocsp-resp.new", "inside")]);
      const bot = await bounded(site, ["--force"]);
      assertFinished(bot);
      assertStatus(bot, 1);
      await assertResponse(response(site, "a.test"), bot);
      assert(!/ERROR.*\.new/.test(printed(bot)), show(bot));
    });
  });
});

Deno.test("an include that does not parse: named, 255, the main config's certificate renewed", async () => {
  await withCa(async (ca) => {
    const { site } = await newSite(ca, "site", ["a.test"], CONFIG + "includes: [inc]\n");
    const inc = path.join(site, "inc");
    await nobodyFolder(inc);
    await nobodyFile(path.join(inc, "bad.yaml"), "domains: [\n");
    const bot = await bounded(site);
    assertFinished(bot);
    assertMatch(printed(bot), /inc\/bad\.yaml/, show(bot));
    await assertResponse(response(site, "a.test"), bot);
    assertStatus(bot, 255);
  });
});

Deno.test("a folder, a FIFO or a socket at output_log: the certificate still renewed, never 254", async (t) => {
  const nothing = () => {};
  // Each plants its object and returns what ends it after the run.
  const plants: [string, (log: string) => Promise<() => void | Promise<void>>][] = [
    ["a folder", (log) => asNobody(["mkdir", "-p", path.join(log, "inside")]).then(() => nothing)],
    ["a FIFO", (log) => asNobody(["mkfifo", log]).then(() => nothing)],
    ["a socket", async (log) => {
      // Served by a process of its own, as a socket someone else serves: the
      // test runner's permissions reach no Unix socket; `deno eval` has them all.
      const server = new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          `Deno.listen({ transport: "unix", path: ${
            JSON.stringify(log)
          } }); setInterval(() => {}, 1000);`,
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      for (let i = 0; i < 200 && !exists(log); i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert((await Deno.lstat(log)).isSocket, "the socket was not made");
      await run("chown", ["-h", "65534:65534", log]);
      return async () => {
        server.kill("SIGKILL");
        await server.status;
      };
    }],
  ];
  await withCa(async (ca) => {
    for (const [index, [name, plant]] of plants.entries()) {
      await t.step(name, async () => {
        const { site } = await newSite(
          ca,
          `site${index}`,
          ["a.test"],
          CONFIG + "output_log: logs/ocspbot.log\n",
        );
        const logs = path.join(site, "logs");
        await nobodyFolder(logs);
        const unplant = await plant(path.join(logs, "ocspbot.log"));
        let bot: Bounded;
        try {
          bot = await bounded(site);
        } finally {
          await unplant();
        }
        assertFinished(bot);
        await assertResponse(response(site, "a.test"), bot);
        assertMatch(bot.stderr, /output_log/, show(bot));
        assertStatus(bot, 1, 255);
      });
    }
  });
});

Deno.test("OCSPBOT_FAKE_NOW in the environment: a warning before the first certificate's line", async () => {
  await withCa(async (ca) => {
    const { site } = await newSite(ca, "site", ["a.test"], CONFIG);
    // One stream, so that the order of stdout's and stderr's lines is kept.
    const bot = await bounded(site, [], {
      env: { OCSPBOT_FAKE_NOW: new Date().toISOString() },
      wrap: ["bash", "-c", 'exec "$@" 2>&1', "bash"],
    });
    assertFinished(bot);
    const lines = bot.stdout.split("\n");
    const warning = lines.findIndex((line) => /WARNING.*OCSPBOT_FAKE_NOW/.test(line));
    const first = lines.findIndex((line) => /^\[a\.test\]/.test(line));
    assert(warning >= 0, `no warning names OCSPBOT_FAKE_NOW:\n${show(bot)}`);
    assert(first >= 0, `no line about a.test:\n${show(bot)}`);
    assert(warning < first, `the warning comes after the first certificate's line:\n${show(bot)}`);
  });
});
