// Copyright 2026 the ocspbot authors. MIT license.

/**
 * ocspbot on a real machine: a full filesystem (a 64 KiB tmpfs), another
 * user (setpriv), a folder it may not write or read, a lock file left by
 * root, and the README's systemd units run by a systemd of the test's own.
 * The promise under test: the response a server staples is never replaced
 * by anything worse, and every failure is one line naming the path. Needs
 * root, to mount, to become `nobody` and to make namespaces, as CI has;
 * `deno task test:machine`.
 *
 * @module
 */

import * as path from "node:path";
import { assert, assertEquals, assertMatch, assertNotEquals } from "./asserts.ts";
import {
  BASE_CONFIG,
  BOT,
  BOT_PERMISSIONS,
  type LeafFiles,
  type LeafOptions,
  makeSite,
  response,
  runBot,
  runBotRedirected,
  type TestCa,
  withCa,
  withTempDir,
  writeWithFolders,
} from "./testca.ts";
import { readmeBlocks, readmeFiles, readmeRecipe } from "./readme.ts";

const decoder = new TextDecoder();

/** Runs a program that must succeed; returns its stdout. */
async function run(program: string, args: string[]): Promise<string> {
  const output = await new Deno.Command(program, { args, stdin: "null" }).output();
  if (!output.success) {
    throw new Error(`${program} ${args.join(" ")}: ${decoder.decode(output.stderr)}`);
  }
  return decoder.decode(output.stdout);
}

/** A `size` tmpfs mounted on `folder` for the length of `fn`. */
async function withTmpfs(folder: string, size: string, fn: () => Promise<void>): Promise<void> {
  await Deno.mkdir(folder, { recursive: true });
  await run("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0755`, "tmpfs", folder]);
  try {
    await fn();
  } finally {
    await run("umount", [folder]);
  }
}

/** Writes zeros into `file` until the filesystem says it is full. */
async function fillUp(file: string): Promise<void> {
  const handle = await Deno.open(file, { write: true, create: true });
  try {
    const block = new Uint8Array(1024);
    for (;;) await handle.write(block);
  } catch (error) {
    if (!/No space left on device/.test(String(error))) throw error;
  } finally {
    handle.close();
  }
}

/** Everything in a folder, hidden files too, sorted. */
function listing(folder: string): string[] {
  return [...Deno.readDirSync(folder)].map((entry) => entry.name).sort();
}

/**
 * Runs the bot as `nobody`, in the groups given (none: --clear-groups), the
 * way cron runs it for an unprivileged user. Deno and its module cache are
 * copied where that user can read them: the test runner's may sit under
 * root's home.
 */
class OtherUser {
  private constructor(readonly dir: string) {}

  static async create(): Promise<OtherUser> {
    const dir = await Deno.makeTempDir({ prefix: "ocspbot-user-" });
    const user = new OtherUser(dir);
    try {
      await Deno.chmod(dir, 0o755);
      await Deno.copyFile(Deno.execPath(), user.deno);
      await Deno.copyFile(BOT, user.script);
      const info = JSON.parse(await run(Deno.execPath(), ["info", "--json"]));
      await Deno.mkdir(path.join(dir, "cache"));
      await run("cp", ["-r", path.join(info.denoDir, "npm"), path.join(dir, "cache", "npm")]);
      await run("chmod", ["-R", "a+rwX", path.join(dir, "cache")]);
    } catch (error) {
      await user.close();
      throw error;
    }
    return user;
  }

  get deno(): string {
    return path.join(this.dir, "deno");
  }

  get script(): string {
    return path.join(this.dir, "ocspbot.ts");
  }

  async runBot(cwd: string, args: string[], groups: string[], env: Record<string, string> = {}) {
    const output = await new Deno.Command("setpriv", {
      args: [
        "--reuid=nobody",
        "--regid=nogroup",
        ...(groups.length > 0 ? [`--groups=${groups.join(",")}`] : ["--clear-groups"]),
        this.deno,
        "run",
        "--quiet",
        "--cached-only",
        "--allow-read",
        "--allow-write",
        "--allow-run",
        "--allow-env",
        this.script,
        ...args,
      ],
      cwd,
      env: { NO_COLOR: "1", DENO_DIR: path.join(this.dir, "cache"), HOME: this.dir, ...env },
      stdin: "null",
    }).output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  }

  async close(): Promise<void> {
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** A CA, and a user other than root to run the bot as, for the length of `fn`. */
async function withOtherUser(fn: (ca: TestCa, user: OtherUser) => Promise<void>): Promise<void> {
  await withCa(async (ca) => {
    const user = await OtherUser.create();
    try {
      await fn(ca, user);
    } finally {
      await user.close();
    }
  });
}

/** A site the CA's temp folder would hide from other users, opened up to them. */
async function openSite(ca: TestCa, names: string[], config: string): Promise<string> {
  const site = await makeSite(ca, names, config);
  await run("chmod", ["-R", "a+rX", ca.dir]);
  return site;
}

Deno.test("before anything else: these tests run as root", async () => {
  const uid = (await run("id", ["-u"])).trim();
  assertEquals(uid, "0", "mount and setpriv need root: run deno task test:machine as root");
});

Deno.test("a full disk: the stored response stays byte for byte, the error names the folder", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"]);
    const folder = path.join(site, "responses");
    await withTmpfs(folder, "64k", async () => {
      assertEquals((await runBot(site)).code, 1);
      const good = await Deno.readFile(response(site, "a.test"));
      const state = await Deno.readFile(path.join(folder, ".ocspbot-state.json"));
      await fillUp(path.join(folder, "filler"));
      const before = listing(folder);

      await t.step("the response is not replaced", async () => {
        const forced = await runBot(site, ["--force"]);
        assertEquals(forced.code, 255, forced.stdout + forced.stderr);
        assertMatch(
          forced.stderr,
          new RegExp(
            `^\\[a\\.test\\] ERROR: Cannot write "a\\.test\\.ocsp-resp" in folder "${folder}": No space left on device; the stored response stays as it was$`,
            "m",
          ),
        );
        assert(!/Stored new OCSP response/.test(forced.stdout), forced.stdout);
        assertEquals(await Deno.readFile(response(site, "a.test")), good);
        assertEquals(listing(folder), before, "a temporary file was left behind");
        assertEquals(
          await Deno.readFile(path.join(folder, ".ocspbot-state.json")),
          state,
          "the state changed",
        );
      });

      await t.step("the backup is not half written, and stops the renewal", async () => {
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          BASE_CONFIG + "make_backups: true\n",
        );
        const forced = await runBot(site, ["--force"]);
        assertEquals(forced.code, 255, forced.stdout + forced.stderr);
        assertMatch(
          forced.stderr,
          /ERROR: Cannot write "a\.test\.ocsp-resp-\d{8}-\d{6}" in folder ".*": No space left on device; the stored response stays as it was/,
        );
        assertEquals(await Deno.readFile(response(site, "a.test")), good);
        assertEquals(listing(folder), before, "a backup or temporary file was left behind");
      });

      await t.step("--check still finds the stored response fresh", async () => {
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 0, check.stdout + check.stderr);
      });

      await t.step("with room again, the next run renews and records it", async () => {
        await Deno.remove(path.join(folder, "filler"));
        const forced = await runBot(site, ["--force"]);
        assertEquals(forced.code, 1, forced.stderr);
        const renewed = await Deno.readFile(response(site, "a.test"));
        assertNotEquals(renewed, good);
        const check = await runBot(site, ["--check"]);
        assertEquals(check.code, 0, check.stdout + check.stderr);
      });
    });
  });
});

Deno.test("logs on a full disk: the renewals go on, and the status never reads as renewals", async (t) => {
  await withCa(async (ca) => {
    const site = await makeSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
    const logs = path.join(site, "logs");
    const cert = path.join(site, "certs", "a.test.pem");
    await withTmpfs(logs, "64k", async () => {
      await fillUp(path.join(logs, "filler"));
      const cases: [string, string, string][] = [
        ["cron's >> log 2>&1", "", `>> ${logs}/cron.log 2>&1`],
        ["output_log", `output_log: ${logs}/ocspbot.log\n`, ""],
      ];
      for (const [name, config, redirection] of cases) {
        await Deno.writeTextFile(
          path.join(site, "ocspbot.yaml"),
          BASE_CONFIG + "timeout: 2\nretries: 0\n" + config,
        );
        await t.step(`${name}: a renewal is made and counted`, async () => {
          ca.mode = "good";
          const renewed = await runBotRedirected(site, ["--force"], redirection);
          assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
          assertEquals(await ca.verifiedStatus(response(site, "a.test"), cert), "good");
          assert(!/^\s+at /m.test(renewed.stderr), renewed.stderr);
        });
        await t.step(`${name}: nothing renewed is 255`, async () => {
          const quiet = await runBotRedirected(site, [], redirection);
          assertEquals(quiet.code, 255, quiet.stdout + quiet.stderr);
        });
        await t.step(`${name}: the responder failing is 255`, async () => {
          ca.mode = "http500";
          const failed = await runBotRedirected(site, ["--force"], redirection);
          assertEquals(failed.code, 255, failed.stdout + failed.stderr);
        });
      }
      await t.step("output_log full, stderr fine: said there once", async () => {
        ca.mode = "good";
        const run = await runBotRedirected(site, ["--force"], "");
        const said = run.stderr.split("\n").filter((line) => /Cannot write to/.test(line));
        assertEquals(said.length, 1, run.stderr);
        assertMatch(
          said[0],
          new RegExp(
            `^ERROR: Cannot write to output_log "${logs}/ocspbot\\.log": No space left on device;`,
          ),
        );
      });
    });
  });
});

Deno.test("as a user who may write the folder: the group is kept, a lost owner is named", async (t) => {
  await withOtherUser(async (ca, user) => {
    const site = await openSite(ca, ["a.test"], BASE_CONFIG);
    const folder = path.join(site, "responses");
    const file = response(site, "a.test");
    // An earlier run as root left the response, the state and the lock file.
    assertEquals((await runBot(site)).code, 1);
    await Deno.chown(folder, 65534, 65534);
    let firstRun = "";
    const handOver = async (mode: number) => {
      await Deno.chown(file, 0, 33);
      await Deno.chmod(file, mode);
    };

    await t.step("in the file's group: the group and mode stay", async () => {
      await handOver(0o640);
      const renewed = await user.runBot(site, ["--force"], ["www-data"]);
      firstRun = renewed.stderr;
      assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
      const info = await Deno.stat(file);
      assertEquals([info.uid, info.gid, info.mode! & 0o7777], [65534, 33, 0o640]);
      assertMatch(
        renewed.stderr,
        new RegExp(
          `^\\[a\\.test\\] WARNING: Cannot keep the owner \\(uid 0\\) of "${file}": the new file has uid 65534, gid 33;`,
          "m",
        ),
      );
      assert(!/group \(gid 33\)/.test(renewed.stderr), renewed.stderr);
    });

    await t.step("outside it: a warning names the group too", async () => {
      await handOver(0o644);
      const renewed = await user.runBot(site, ["--force"], []);
      assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
      const info = await Deno.stat(file);
      assertEquals([info.gid, info.mode! & 0o7777], [65534, 0o644]);
      assertMatch(renewed.stderr, /Cannot keep the owner \(uid 0\) and group \(gid 33\) of "/);
    });

    await t.step(
      "root's 0600 lock, which this user cannot open, was replaced by its own",
      async () => {
        const lock = await Deno.stat(path.join(folder, ".ocspbot-state.json.lock"));
        assertEquals([lock.uid, lock.mode! & 0o777], [65534, 0o600]);
        assertMatch(
          firstRun,
          /^WARNING: The lock file ".*\.lock" is uid 0's and cannot be opened by this user \(run ocspbot as one user\): removed, and a file made in its place$/m,
        );
      },
    );
  });
});

Deno.test("a response folder the user may not write: one line naming it, no stack trace", async () => {
  await withOtherUser(async (ca, user) => {
    // The state and its lock where the user may write: root's 0600 lock is then replaced.
    const site = await openSite(ca, ["a.test"], BASE_CONFIG + "state_file: state/state\n");
    await Deno.mkdir(path.join(site, "state"));
    await Deno.chown(path.join(site, "state"), 65534, 65534);
    const folder = path.join(site, "responses");
    assertEquals((await runBot(site)).code, 1);
    const good = await Deno.readFile(response(site, "a.test"));
    const forced = await user.runBot(site, ["--force"], []);
    assertEquals(forced.code, 255, forced.stdout + forced.stderr);
    assertMatch(
      forced.stderr,
      new RegExp(
        `^\\[a\\.test\\] ERROR: Cannot write "a\\.test\\.ocsp-resp" in folder "${folder}": Permission denied; the stored response stays as it was$`,
        "m",
      ),
    );
    assert(!/^\s+at /m.test(forced.stderr), `a stack trace reached the user:\n${forced.stderr}`);
    assert(!/Unexpected failure/.test(forced.stderr), forced.stderr);
    assertEquals(await Deno.readFile(response(site, "a.test")), good);
  });
});

Deno.test("a scan folder the user may not read: one line naming it, status 253", async () => {
  await withOtherUser(async (ca, user) => {
    const site = await openSite(ca, ["a.test"], BASE_CONFIG);
    const certs = path.join(site, "certs");
    await Deno.chmod(certs, 0o700);
    await Deno.mkdir(path.join(site, "responses"));
    await Deno.chmod(path.join(site, "responses"), 0o777);
    const run = await user.runBot(site, [], []);
    assertEquals(run.code, 253, run.stdout + run.stderr);
    assertMatch(
      run.stderr,
      new RegExp(
        `^ERROR: Cannot scan scan_keys folder "certs" of config ".*": cannot list "${certs}": Permission denied; let the user running ocspbot read it$`,
        "m",
      ),
    );
  });
});

/**
 * Makes a symbolic link as `nobody`, as a less-trusted user who may write the
 * folder would; without libfaketime, whose root-owned semaphore nobody may not
 * open when the suite runs under faketime.
 */
async function plantLink(link: string, target: string): Promise<void> {
  await run("env", [
    "-u",
    "LD_PRELOAD",
    "setpriv",
    "--reuid=nobody",
    "--regid=nogroup",
    "--clear-groups",
    "ln",
    "-sfn",
    target,
    link,
  ]);
}

Deno.test("root never writes through a link another user planted", async (t) => {
  await withCa(async (ca) => {
    const site = await openSite(ca, ["a.test"], BASE_CONFIG + "timeout: 2\nretries: 0\n");
    const folder = path.join(site, "responses");
    const file = response(site, "a.test");
    // A response folder a less-trusted user may write, as a www-data-owned one.
    await Deno.mkdir(folder);
    await Deno.chown(folder, 65534, 65534);
    const victims = path.join(ca.dir, "victims");
    const victim = path.join(victims, "precious");
    const precious = "root:precious:content\n";
    // Each step starts from an intact victim, so that one step's harm cannot pass for another's.
    const step = (name: string, fn: () => Promise<void>) =>
      t.step(name, async () => {
        await Deno.remove(victims, { recursive: true }).catch(() => {});
        await Deno.mkdir(victims);
        await Deno.writeTextFile(victim, precious);
        await fn();
      });
    const untouched = async () => {
      assertEquals(await Deno.readTextFile(victim), precious, "root wrote through the link");
      assertEquals(listing(victims), ["precious"], "root made a file through a link");
    };

    await step("at the temporary file's name: exclusive, unguessable", async () => {
      // In a PID namespace Deno is PID 1, so the name ocspbot 1.0 used is known ahead.
      await plantLink(path.join(folder, ".a.test.ocsp-resp.1.tmp"), victim);
      const output = await new Deno.Command("unshare", {
        args: ["--pid", "--fork", Deno.execPath(), "run", "--quiet", ...BOT_PERMISSIONS, BOT],
        cwd: site,
        env: { NO_COLOR: "1" },
        stdin: "null",
      }).output();
      assertEquals(output.code, 1, decoder.decode(output.stderr));
      await untouched();
      assert(!(await Deno.lstat(file)).isSymlink, "the planted link became the response");
      await Deno.remove(path.join(folder, ".a.test.ocsp-resp.1.tmp"));
    });

    await step("at the response itself: replaced by the response, not followed", async () => {
      await plantLink(file, victim);
      const renewed = await runBot(site);
      assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
      await untouched();
      assert(!(await Deno.lstat(file)).isSymlink, "the link is still there");
      assertMatch(
        renewed.stderr,
        new RegExp(
          `^\\[a\\.test\\] WARNING: "${file}" is a link owned by uid 65534, which another user could have planted; .*: replaced by the file itself$`,
          "m",
        ),
      );
      const check = await runBot(site, ["--check"]);
      assertEquals(check.code, 0, check.stdout + check.stderr);
    });

    await step("at the rejected answer's name", async () => {
      await plantLink(path.join(folder, ".a.test.ocsp-resp.rejected"), victim);
      ca.mode = "wrong-signer";
      const failed = await runBot(site, ["--force"]);
      ca.mode = "good";
      assertEquals(failed.code, 255, failed.stdout + failed.stderr);
      await untouched();
    });

    await step("at the state file: ignored without quoting it, then replaced", async () => {
      const state = path.join(folder, ".ocspbot-state.json");
      await Deno.remove(state);
      await plantLink(state, victim);
      const renewed = await runBot(site, ["--force"]);
      assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
      await untouched();
      assert(!renewed.stderr.includes("precious"), `the file was quoted:\n${renewed.stderr}`);
      assertMatch(
        renewed.stderr,
        /^WARNING: Ignoring state file: ".*" is a link owned by uid 65534/m,
      );
      assert(!(await Deno.lstat(state)).isSymlink, "the state is still a link");
    });

    await step(
      "at the lock file: replaced, the run goes on, no file made where it pointed",
      async () => {
        const lock = path.join(folder, ".ocspbot-state.json.lock");
        await Deno.remove(lock);
        await plantLink(lock, path.join(victims, "nologin"));
        const quiet = await runBot(site);
        assertEquals(quiet.code, 0, quiet.stdout + quiet.stderr);
        await untouched();
      },
    );

    await step("at the output log", async () => {
      const logs = path.join(site, "logs");
      await Deno.mkdir(logs);
      await Deno.chown(logs, 65534, 65534);
      await plantLink(path.join(logs, "ocspbot.log"), victim);
      await Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        BASE_CONFIG + "output_log: logs/ocspbot.log\nerror_log: logs/ocspbot.log\n",
      );
      const logged = await runBot(site, ["--force"]);
      assertEquals(logged.code, 1, logged.stdout + logged.stderr);
      await untouched();
      assertMatch(await Deno.readTextFile(path.join(logs, "ocspbot.log")), /Stored new OCSP/);
    });

    await step("at a folder on the way: refused, naming the link", async () => {
      await plantLink(path.join(folder, "sub"), victims);
      await Deno.writeTextFile(
        path.join(site, "ocspbot.yaml"),
        BASE_CONFIG.replace("scan_keys:\n  - folder: certs\n", "") + `domains:
  a.test:
    cert: certs/a.test.pem
    chain: certs/a.test-chain.pem
    rootchain: certs/a.test-rootchain.pem
    ocsp: sub/a.der
`,
      );
      const refused = await runBot(site);
      assertEquals(refused.code, 255, refused.stdout + refused.stderr);
      // Refused when the stored response is looked for, before any write.
      assertMatch(
        refused.stderr,
        new RegExp(`ERROR: .*"${folder}/sub" is a link owned by uid 65534`),
      );
      await untouched();
    });
  });
});

Deno.test("links the bot's own user made are followed, as root's are", async () => {
  await withOtherUser(async (ca, user) => {
    const site = await openSite(ca, ["a.test"], BASE_CONFIG);
    const folder = path.join(site, "responses");
    const shared = path.join(site, "shared");
    for (const made of [folder, shared]) {
      await Deno.mkdir(made);
      await Deno.chown(made, 65534, 65534);
    }
    await plantLink(response(site, "a.test"), "../shared/a.der");
    const renewed = await user.runBot(site, [], []);
    assertEquals(renewed.code, 1, renewed.stdout + renewed.stderr);
    assert((await Deno.lstat(response(site, "a.test"))).isSymlink, "the link was replaced");
    assertEquals(
      await ca.verifiedStatus(path.join(shared, "a.der"), path.join(site, "certs", "a.test.pem")),
      "good",
    );
  });
});

/**
 * A systemd of the test's own: PID 1 in new PID, mount, UTS, IPC and cgroup
 * namespaces, on the host's network. `/etc`, `/var` and `/usr/local` are
 * overlays of the host's whose changes land in `dir` (the README's setup adds
 * a user and installs the bot there) and vanish with it; `/run` is empty.
 * It knows only the units given and empty targets: no generator runs, and
 * nothing of the host's boot (tmpfiles would empty the host's /tmp, which is
 * not private; the host's own services) can be started.
 */
class PrivateSystemd {
  private constructor(
    private readonly unshare: Deno.ChildProcess,
    private readonly pid: number,
  ) {}

  static readonly LAYERS = ["etc", "var", "usr/local"];
  static readonly TARGETS = [
    "basic",
    "local-fs",
    "multi-user",
    "network",
    "network-online",
    "paths",
    "shutdown",
    "sockets",
    "sysinit",
    "time-set",
    "time-sync",
    "timers",
  ];

  /** Where the file at `file` inside is kept, to be written before boot or read after. */
  static upper(dir: string, file: string): string {
    return path.join(dir, "upper", file);
  }

  /**
   * The host's systemd-journald and its socket, to be the journal of the
   * services inside as in production. Only its own socket unit: the
   * /dev/log one would link the host's /dev/log (/dev is the host's), and
   * journald binds /run/systemd/journal/dev-log itself without it.
   */
  static async journald(): Promise<Record<string, string>> {
    const host = (name: string) => Deno.readTextFile(path.join("/usr/lib/systemd/system", name));
    const service = await host("systemd-journald.service");
    assertMatch(service, /^Sockets=/m);
    return {
      "systemd-journald.socket": await host("systemd-journald.socket"),
      "systemd-journald.service": service.replace(
        /^Sockets=.*$/m,
        "Sockets=systemd-journald.socket",
      ),
    };
  }

  /**
   * Boots with `units` (name → text; "x.service.d/y.conf" for drop-ins) as
   * all it knows; with `journal`, systemd-journald too, started before the
   * boot is done, keeping the journal in /run, reading no kernel messages.
   */
  static async boot(
    dir: string,
    units: Record<string, string>,
    options: { journal?: boolean } = {},
  ): Promise<PrivateSystemd> {
    for (const layer of PrivateSystemd.LAYERS) {
      await Deno.mkdir(path.join(dir, "upper", layer), { recursive: true });
      await Deno.mkdir(path.join(dir, "work", layer), { recursive: true });
    }
    for (const target of PrivateSystemd.TARGETS) {
      await writeWithFolders(
        path.join(dir, "targets", `${target}.target`),
        "[Unit]\nDefaultDependencies=no\n",
      );
    }
    await writeWithFolders(
      path.join(dir, "targets", "ocspbot-test.target"),
      "[Unit]\nDefaultDependencies=no\n" +
        (options.journal ? "Wants=systemd-journald.service\nAfter=systemd-journald.service\n" : ""),
    );
    if (options.journal) {
      units = { ...await PrivateSystemd.journald(), ...units };
      await writeWithFolders(
        PrivateSystemd.upper(dir, "etc/systemd/journald.conf.d/ocspbot-test.conf"),
        "[Journal]\nStorage=volatile\nReadKMsg=no\n",
      );
    }
    for (const [name, text] of Object.entries(units)) {
      await writeWithFolders(path.join(dir, "units", name), text);
    }
    // Under faketime the services run on the test's clock, as the responder does.
    const faked = Object.entries(Deno.env.toObject())
      .filter(([name]) => name === "LD_PRELOAD" || name.startsWith("FAKETIME"));
    if (faked.length > 0) {
      await writeWithFolders(
        PrivateSystemd.upper(dir, "etc/systemd/system.conf.d/faketime.conf"),
        `[Manager]\nDefaultEnvironment=${faked.map(([n, v]) => `"${n}=${v}"`).join(" ")}\n`,
      );
    }
    const script = [
      "set -e",
      ...PrivateSystemd.LAYERS.map((layer) =>
        `mount -t overlay overlay -o lowerdir=/${layer},upperdir=${dir}/upper/${layer},workdir=${dir}/work/${layer} /${layer}`
      ),
      "mount -t tmpfs tmpfs /run",
      "for folder in /usr/lib/systemd/system /usr/lib/systemd/system-generators /etc/systemd/system; do",
      '  if [ -d "$folder" ]; then mount -t tmpfs tmpfs "$folder"; fi',
      "done",
      `cp -r ${dir}/targets/. /usr/lib/systemd/system/`,
      `cp -r ${dir}/units/. /etc/systemd/system/`,
      // The README's deno is on PATH; the test runner's may sit under root's home.
      "mkdir -p /usr/local/bin && touch /usr/local/bin/deno",
      `mount --bind '${Deno.execPath()}' /usr/local/bin/deno`,
      "exec env -i container=ocspbot-test /lib/systemd/systemd --system --unit=ocspbot-test.target",
    ].join("\n");
    const unshare = new Deno.Command("unshare", {
      args: ["--fork", "--pid", "--mount", "--mount-proc", "--uts", "--ipc", "--cgroup"].concat(
        ["sh", "-c", script],
      ),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let pid = 0;
    for (let waited = 0; pid === 0 && waited < 100; waited++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const children = await new Deno.Command("pgrep", { args: ["-P", String(unshare.pid)] })
        .output();
      pid = Number(decoder.decode(children.stdout).trim()) || 0;
    }
    const systemd = new PrivateSystemd(unshare, pid);
    for (let waited = 0; waited < 100; waited++) {
      if (
        pid !== 0 &&
        (await systemd.run(["systemctl", "is-active", "ocspbot-test.target"])).code === 0
      ) {
        return systemd;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`systemd did not come up in 10 s: ${await systemd.shutdown()}`);
  }

  /** Runs a command inside, from `cwd`, with `stdin`; never throws. */
  async run(args: string[], options: { cwd?: string; stdin?: string } = {}) {
    const child = new Deno.Command("nsenter", {
      args: [
        `--target=${this.pid}`,
        "--mount",
        "--pid",
        "--uts",
        "--ipc",
        "--cgroup",
        `--wd=${options.cwd ?? "/"}`,
        "--",
        ...args,
      ],
      // Only the services run on the test's clock (DefaultEnvironment): libfaketime
      // 0.9.10 can crash a process at exit (status 139), which would fail a setup step.
      env: {
        PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        LD_PRELOAD: "",
      },
      stdin: options.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (options.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(options.stdin));
      await writer.close();
    }
    const output = await child.output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  }

  /** Ends PID 1, and with it every process and mount of the namespaces; returns what it said. */
  async shutdown(): Promise<string> {
    if (this.pid !== 0) Deno.kill(this.pid, "SIGKILL");
    return decoder.decode((await this.unshare.output()).stderr);
  }
}

/** The README's block `name` (see readmeBlocks), failing on one it lacks. */
async function readmeBlock(): Promise<(name: string) => string> {
  const blocks = await readmeBlocks();
  return (name) => {
    const text = blocks.get(name);
    assert(text !== undefined, `README.md and docs/*.md have no block "${name}"`);
    return text;
  };
}

/** The README's units for /etc/systemd/system. */
const README_UNITS = [
  "ocspbot.service",
  "ocspbot.timer",
  "ocspbot-reload.path",
  "ocspbot-reload.service",
];

/** A stand-in for nginx that counts its reloads in /run/nginx-reloads. */
const NGINX_STAND_IN = "[Unit]\nDescription=A stand-in for nginx that counts its reloads\n\n" +
  "[Service]\nExecStart=/bin/sleep infinity\n" +
  "ExecReload=/bin/sh -c 'echo reloaded >> /run/nginx-reloads'\n";

/**
 * A machine as certbot leaves it, in the upper layers of a PrivateSystemd
 * booted in `root`: the certbot recipe with the systemd section's lines for
 * the bot's folder and marker (and `config`), a certificate in certbot's tree
 * for each of `domains`, the test root in the system's CA bundle, js-yaml
 * in the bot's cache. Returns the certificates, by domain.
 */
async function certbotMachine(
  ca: TestCa,
  root: string,
  block: (name: string) => string,
  domains: Record<string, LeafOptions>,
  config = "",
): Promise<Record<string, LeafFiles>> {
  const upper = (file: string) => PrivateSystemd.upper(root, file);
  const recipe = (await readmeRecipe("certbot", "/")).split("\n")
    .filter((line) => !/^(ocsp_folder|on_change):/.test(line)).join("\n");
  await writeWithFolders(
    upper("etc/ocspbot/ocspbot.yaml"),
    recipe + block("systemd config") + config,
  );
  // certbot's tree as certbot leaves it: live/ and archive/ for root only.
  const leaves: Record<string, LeafFiles> = {};
  for (const [domain, options] of Object.entries(domains)) {
    const leaf = await ca.issueLeaf(path.join(ca.dir, "issued"), domain, options);
    leaves[domain] = leaf;
    const archive = upper(`etc/letsencrypt/archive/${domain}`);
    await writeWithFolders(path.join(archive, "cert1.pem"), await Deno.readTextFile(leaf.cert));
    await writeWithFolders(path.join(archive, "chain1.pem"), await Deno.readTextFile(ca.chain));
    const live = upper(`etc/letsencrypt/live/${domain}`);
    await Deno.mkdir(live, { recursive: true });
    for (const name of ["cert", "chain"]) {
      await Deno.symlink(`../../archive/${domain}/${name}1.pem`, path.join(live, `${name}.pem`));
    }
  }
  for (const folder of ["live", "archive"]) {
    await Deno.chmod(upper(`etc/letsencrypt/${folder}`), 0o700);
  }
  // The test root joins the system's CA bundle, which the recipe verifies against.
  await writeWithFolders(
    upper("etc/ssl/certs/ca-certificates.crt"),
    await Deno.readTextFile("/etc/ssl/certs/ca-certificates.crt") +
      await Deno.readTextFile(path.join(ca.dir, "root.pem")),
  );
  // js-yaml is in the bot's cache already: the setup has no network to fetch it.
  const info = JSON.parse(await run(Deno.execPath(), ["info", "--json"]));
  await Deno.mkdir(upper("var/cache/ocspbot"), { recursive: true });
  await run("cp", ["-r", path.join(info.denoDir, "npm"), upper("var/cache/ocspbot/npm")]);
  return leaves;
}

/**
 * The README's setup, word for word, as root from the clone, with no
 * network but its own loopback: the user, `install`, and enabling the units.
 */
async function readmeSetup(
  systemd: PrivateSystemd,
  block: (name: string) => string,
  install: string,
): Promise<void> {
  const setup = await systemd.run(["unshare", "--net", "sh", "-ex"], {
    cwd: path.join(import.meta.dirname!, ".."),
    stdin: block("systemd user") + install + block("systemd enable"),
  });
  assertEquals(setup.code, 0, setup.stdout + setup.stderr);
}

Deno.test("the README's systemd units: verified, scored, and run by a real systemd", async (t) => {
  const block = await readmeBlock();
  const unitNames = README_UNITS;
  const units = Object.fromEntries(unitNames.map((name) => [name, block(name)]));
  await withTempDir("ocspbot-systemd-", async (dir) => {
    const unitFolder = path.join(dir, "units");
    for (const name of unitNames) await writeWithFolders(path.join(unitFolder, name), units[name]);

    await t.step("systemd-analyze verify finds nothing to say", async () => {
      const verify = await new Deno.Command("systemd-analyze", {
        args: ["verify", ...unitNames.map((name) => path.join(unitFolder, name))],
      }).output();
      const said = decoder.decode(verify.stdout) + decoder.decode(verify.stderr);
      assertEquals([verify.code, said], [0, ""]);
    });

    await t.step("the exposure score is 2.5 or lower, and the one the README states", async () => {
      const security = decoder.decode(
        (await new Deno.Command("systemd-analyze", {
          args: ["security", "--offline=true", path.join(unitFolder, "ocspbot.service")],
        }).output()).stdout,
      );
      const score = security.match(/Overall exposure level for ocspbot\.service: ([\d.]+) (\w+)/);
      assert(score, security);
      assert(Number(score[1]) <= 2.5, security);
      const readme = [...(await readmeFiles()).values()].join("\n");
      assert(
        readme.includes(`rates it **${score[1]} ${score[2]}**`),
        `README.md and docs/*.md do not state ${score[1]}`,
      );
    });

    // The setup runs with no network but its own loopback, where the URL install finds its mirror.
    const mirror = "http://127.0.0.1:8000/ocspbot.ts";
    const serveMirror = [
      "ip link set lo up",
      `deno eval "Deno.serve({ hostname: '127.0.0.1', port: 8000, onListen() {} }, () => new Response(Deno.readFileSync('ocspbot.ts')))" >/dev/null 2>&1 &`,
      "mirror=$!",
      `for try in $(seq 100); do deno eval "await fetch('${mirror}')" 2>/dev/null && break; sleep 0.1; done`,
    ].join("\n");
    const installs: Record<string, string> = {
      "as a command": block("systemd install command"),
      "by URL": serveMirror + "\n" +
        block("systemd install url").replace("https://your.mirror.example/ocspbot.ts", mirror) +
        "kill $mirror\n",
      "as a script": block("systemd install script"),
    };
    for (const [install, commands] of Object.entries(installs)) {
      await t.step(`installed ${install}: a run renews, one reload, then nothing`, async () => {
        await withCa(async (ca) => {
          const root = path.join(dir, install.replaceAll(" ", "-"));
          const upper = (file: string) => PrivateSystemd.upper(root, file);
          const leaf = (await certbotMachine(ca, root, block, { "bot.example.com": {} }))[
            "bot.example.com"
          ];

          const systemd = await PrivateSystemd.boot(root, {
            ...units,
            // Where the bot's output goes, to show when something fails.
            "ocspbot.service.d/test-output.conf":
              "[Service]\nStandardOutput=append:/run/ocspbot.out\nStandardError=append:/run/ocspbot.out\n",
            "nginx.service": NGINX_STAND_IN,
          });
          try {
            const show = async (unit: string) => {
              const out = await systemd.run(["cat", "/run/ocspbot.out"]);
              const status = await systemd.run(["systemctl", "status", "--no-pager", unit]);
              return `${out.stdout}\n${status.stdout}`;
            };
            assertEquals((await systemd.run(["systemctl", "start", "nginx.service"])).code, 0);
            await readmeSetup(systemd, block, commands);

            const first = await systemd.run(["systemctl", "start", "ocspbot.service"]);
            assertEquals(first.code, 0, first.stderr + (await show("ocspbot.service")));
            const der = upper("var/lib/ocspbot/bot.example.com.der");
            assertEquals(await ca.verifiedStatus(der, leaf.cert), "good");
            const passwd = await Deno.readTextFile(upper("etc/passwd"));
            const uid = Number(passwd.match(/^ocspbot:x:(\d+):/m)?.[1]);
            assertEquals((await Deno.stat(der)).uid, uid, "the response is not the bot's own");
            const reloads = async () => (await systemd.run(["cat", "/run/nginx-reloads"])).stdout;
            for (let waited = 0; waited < 100 && (await reloads()) === ""; waited++) {
              await new Promise((resolve) => setTimeout(resolve, 100));
            }
            assertEquals(await reloads(), "reloaded\n", await show("ocspbot-reload.service"));

            const stored = (await Deno.stat(der)).mtime;
            const second = await systemd.run(["systemctl", "start", "ocspbot.service"]);
            assertEquals(second.code, 0, second.stderr + (await show("ocspbot.service")));
            assertEquals((await Deno.stat(der)).mtime, stored, "a run with nothing due wrote");
            await new Promise((resolve) => setTimeout(resolve, 1000));
            assertEquals(await reloads(), "reloaded\n", "reloaded with nothing renewed");
          } finally {
            await systemd.shutdown();
          }
        });
      });
    }
  });
});

Deno.test("under systemd, the journal gets each line's priority: journalctl -p warning shows a failing run's error, not its info lines", async () => {
  const block = await readmeBlock();
  const units = Object.fromEntries(README_UNITS.map((name) => [name, block(name)]));
  // The README's command but --quiet, which would leave no info line to keep apart.
  const execStart = units["ocspbot.service"].match(/^ExecStart=.* --quiet;.*$/m);
  assert(execStart, "the README's ocspbot.service runs no --quiet ExecStart");
  await withTempDir("ocspbot-journal-", async (root) => {
    await withCa(async (ca) => {
      const leaves = await certbotMachine(
        ca,
        root,
        block,
        {
          "bot.example.com": {},
          // Nothing listens on the discard port: openssl retries the refused
          // connection until `timeout`, and the run fails without retries.
          "down.example.com": { ocspUrls: ["http://127.0.0.1:9/"] },
        },
        "timeout: 2\nretries: 0\n",
      );
      // The bot's stdout and stderr go to the journal, as systemd's defaults have it.
      const systemd = await PrivateSystemd.boot(root, {
        ...units,
        "ocspbot.service.d/test-not-quiet.conf": "[Service]\nExecStart=\n" +
          execStart[0].replace(" --quiet;", ";") + "\n",
        "nginx.service": NGINX_STAND_IN,
      }, { journal: true });
      try {
        const journal = async (...args: string[]) => {
          const read = await systemd.run(
            ["journalctl", "--no-pager", "-u", "ocspbot.service", "-o", "cat", ...args],
          );
          assertEquals(read.code, 0, read.stderr);
          return read.stdout;
        };
        assertEquals((await systemd.run(["systemctl", "start", "nginx.service"])).code, 0);
        await readmeSetup(systemd, block, block("systemd install script"));

        const started = await systemd.run(["systemctl", "start", "ocspbot.service"]);
        assert(started.code !== 0, "a run with a failure did not fail the unit");
        const status = await systemd.run(
          ["systemctl", "show", "--property=ExecMainStatus", "ocspbot.service"],
        );
        // The shell's `[ $? -le 251 ]` over the bot's 255.
        assertEquals(status.stdout, "ExecMainStatus=1\n", await journal());
        assertEquals(
          await ca.verifiedStatus(
            PrivateSystemd.upper(root, "var/lib/ocspbot/bot.example.com.der"),
            leaves["bot.example.com"].cert,
          ),
          "good",
        );
        // The summary is the run's last line: once it is in, all of the run is.
        for (let waited = 0; waited < 50 && !/^Failure: /m.test(await journal()); waited++) {
          await new Promise((resolve) => setTimeout(resolve, 100));
        }

        const all = await journal();
        // The bot's lines: not systemd's own about the unit, which -u shows too.
        const fromBot = (text: string) =>
          text.split("\n").filter((line) =>
            line !== "" &&
            !/^(Starting |Failed to start )ocspbot\.service |^ocspbot\.service: /.test(line)
          );
        const botLines = fromBot(all);
        assertMatch(botLines.join("\n"), /^\[bot\.example\.com\] Stored new OCSP response: good/m);
        assertMatch(botLines.join("\n"), /^Failure: 0 unchanged OCSP responses, 1 updated/m);
        const errors = botLines.filter((line) => / ERROR: /.test(line));
        assertEquals(errors.length, 1, all);
        assertMatch(errors.join("\n"), /^\[down\.example\.com\] ERROR: No usable response /, all);
        const warnings = await journal("-p", "warning");
        assertEquals(
          fromBot(warnings),
          botLines.filter((line) => / (WARNING|ERROR): /.test(line)),
          `-p warning, of:\n${all}`,
        );
        assert(!/Stored new OCSP response|^Failure: /m.test(warnings), warnings);
        assertEquals(fromBot(await journal("-p", "err")), errors, `-p err, of:\n${all}`);
        assertEquals(fromBot(await journal("-p", "info")), botLines, `-p info, of:\n${all}`);
        // The journal took the prefixes as priorities, and left none in the text.
        assert(!/<\d>/.test(all), all);
      } finally {
        await systemd.shutdown();
      }
    });
  });
});
